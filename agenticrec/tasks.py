"""What the agent can be asked: a ranking ``Instance`` (``agenticrec.data``: rank the candidates) or a
``PreferenceTask`` (PPR's A / B question, ``agenticrec.ppr``: which of two items is the user MORE / LESS likely to
choose). The rollout (``agenticrec.agent``) runs both; this module sits below it so that the agent does not depend
on the PPR stage that builds the questions.
"""

from __future__ import annotations

from dataclasses import dataclass

from agenticrec.data import Instance

MORE, LESS = "MORE", "LESS"
QUESTIONS = {MORE: "Which item is the user MORE likely to choose next?",
             LESS: "Which item is the user LESS likely to choose next?"}


@dataclass
class PreferenceTask(Instance):
    """An A / B question. As an ``Instance``: candidates = [option A, option B] (the tools number them 1 and 2),
    target = the correct option (c+ for MORE, c- for LESS), so a rollout's reward and rank need nothing new."""

    direction: str = MORE
    pair_index: int = 0

    @property
    def answer(self) -> str:
        return "AB"[self.candidates.index(self.target)]


def preference_message(task: PreferenceTask, title) -> str:
    """The user turn of an A / B task; ``title(item)`` gives the (possibly shortened) title."""
    history = "\n".join(f"{n}. {title(i)}" for n, i in enumerate(task.history, 1))
    return (f"The user's history, oldest first:\n{history}\n\nOptions (the tools call them candidates 1 and 2):\n"
            f"A. {title(task.candidates[0])}\nB. {title(task.candidates[1])}\n\n{QUESTIONS[task.direction]}")
