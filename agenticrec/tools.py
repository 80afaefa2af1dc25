"""The seven recommendation tools the agent can call (AgenticRec, Appendix B), each a small function of a
``ToolContext`` and its arguments that returns compact text.

No leakage, by construction: a tool sees a ``ToolContext`` (the user's history before the target, the candidate
set, ratings / timestamps of the history), never the instance's target, and the collaborative statistics
(popularity, SASRec) are fitted on ``agenticrec.data.training_sequences``, which ends before every instance's
target. A tool's output is therefore the same whichever candidate is the target
(``tests/test_tools.py::test_outputs_do_not_depend_on_which_candidate_is_the_target``).

Bad arguments (unknown item, wrong type, empty string, unexpected names) give an error observation that the
rollout counts; a tool never raises. Candidates are numbered from 1, as in the prompt.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from agenticrec.baselines import popularity
from agenticrec.data import Dataset, Instance, training_sequences_by_user
from agenticrec.tasks import PreferenceTask

MAX_OBSERVATION_CHARS = 1500  # longer observations are cut with an explicit marker, never silently
STOPWORDS = set("a an and the of for to in on with by from edition version pack set new game games video for "
                "-".split())


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about an instance: everything before the target, and the candidate set."""

    user: str
    history: tuple[int, ...]
    candidates: tuple[int, ...]
    history_ratings: tuple[float, ...] | None = None
    history_timestamps: tuple[int, ...] | None = None
    # an A / B question's MORE / LESS (agenticrec.tasks), None for a ranking request: the question the tools serve
    # is in the prompt, so a tool may know it too. The paper's tools do not read it; the CPU preset's option line
    # does (agenticrec.preset.PresetToolbox)
    direction: str | None = None


# (name, arguments) of the calls a trajectory made before the current one, oldest first (``Toolbox.call``)
EarlierCalls = tuple[tuple[str, dict], ...]


def context_for(instance: Instance, data: Dataset) -> ToolContext:
    ratings = timestamps = None
    if instance.position is not None:
        seq = data.sequence_of(instance.user)
        start = instance.position - len(instance.history)
        if seq.ratings is not None:
            ratings = tuple(seq.ratings[start:instance.position])
        if seq.timestamps is not None:
            timestamps = tuple(seq.timestamps[start:instance.position])
    direction = instance.direction if isinstance(instance, PreferenceTask) else None
    return ToolContext(instance.user, tuple(instance.history), tuple(instance.candidates), ratings, timestamps,
                       direction)


@dataclass
class ToolResult:
    text: str
    error: str | None = None  # None when the call succeeded
    seconds: float = 0.0


class ToolError(Exception):
    """Raised inside a tool for a bad argument; ``Toolbox.call`` turns it into an error observation."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema properties
    required: tuple[str, ...]
    run: Callable  # (toolbox, context, **arguments) -> str

    @property
    def schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": {"type": "object", "properties": self.parameters,
                                                                "required": list(self.required)}}}


# --------------------------------------------------------------------------------------------------------------------
# The toolbox: the data and fitted statistics every tool reads
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Toolbox:
    data: Dataset
    sasrec: object | None = None  # agenticrec.sasrec.SASRec; None disables the two collaborative tools
    profiles: dict[str, str] = field(default_factory=dict)  # LLM-written profiles, keyed by profile_key
    enabled: tuple[str, ...] | None = None  # None = all seven

    def __post_init__(self):
        self._user_vector_cache: dict[tuple[int, ...], np.ndarray] = {}
        self.popularity = popularity(self.data)
        self.pop_rank = np.empty_like(self.popularity)
        self.pop_rank[np.argsort(-self.popularity, kind="stable")] = np.arange(1, len(self.popularity) + 1)
        self.titles = TitleIndex(self.data)
        self.keywords = [self.titles.keywords(i) for i in range(len(self.data.items))]
        if self.sasrec is not None:
            self._fit_collaborative()

    def _fit_collaborative(self) -> None:
        with torch.no_grad():
            items = self.sasrec.item_embeddings().float()
            self.item_vectors = torch.nn.functional.normalize(items, dim=-1).numpy()
            train = training_sequences_by_user(self.data)
            self.neighbour_users = [u for u, _ in train]
            self.neighbour_recent = [seq[-3:] for _, seq in train]
            vectors = torch.cat([self.sasrec.user_embedding([seq for _, seq in train[i:i + 1024]])
                                 for i in range(0, len(train), 1024)])
            self.user_vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)  # [users, d]

    def user_vector(self, history: tuple[int, ...]) -> np.ndarray:
        """The normalised SASRec embedding of a history, memoised: the G rollouts of a group ask for the same one."""
        if history not in self._user_vector_cache:
            if len(self._user_vector_cache) > 100_000:
                self._user_vector_cache.clear()
            with torch.no_grad():
                vector = self.sasrec.user_embedding([list(history)]).float()
            self._user_vector_cache[history] = torch.nn.functional.normalize(vector, dim=-1)[0].numpy()
        return self._user_vector_cache[history]

    @property
    def tools(self) -> list[Tool]:
        available = [t for t in TOOLS if self.sasrec is not None or t.name not in COLLABORATIVE]
        return [t for t in available if self.enabled is None or t.name in self.enabled]

    @property
    def schemas(self) -> list[dict]:
        return [t.schema for t in self.tools]

    @property
    def names(self) -> set[str]:
        return {t.name for t in self.tools}

    def call(self, name: str, arguments, context: ToolContext, earlier: EarlierCalls = ()) -> ToolResult:
        """Run one tool call; every failure becomes an error observation (``ToolResult.error``), never raised.

        ``earlier``: the (name, arguments) of the calls this trajectory made before, oldest first, that succeeded.
        The paper's tools ignore it; a toolbox variant may use it (``PresetToolbox``'s ordering line does)."""
        start = time.perf_counter()
        tool = next((t for t in self.tools if t.name == name), None)
        try:
            if tool is None:
                raise ToolError(f"unknown tool {str(name)[:40]!r}; available: {', '.join(sorted(self.names))}")
            text, error = _truncate(self.observe(tool, context, _check_arguments(tool, arguments), earlier)), None
        except ToolError as err:
            text, error = f"error: {err}", str(err)
        except Exception as err:  # a bug in a tool must cost one observation, not the run; it is counted
            text, error = f"error: internal tool failure ({type(err).__name__})", f"internal: {err!r}"[:200]
        return ToolResult(text, error, time.perf_counter() - start)

    def observe(self, tool: Tool, context: ToolContext, arguments: dict, earlier: EarlierCalls = ()) -> str:
        """One tool's observation text (before the length cut): the hook a toolbox variant extends
        (``agenticrec.preset.PresetToolbox`` appends an ordering line)."""
        return tool.run(self, context, **arguments)

    # shared helpers ---------------------------------------------------------------------------------------------

    def label(self, item: int, context: ToolContext, width: int = 60) -> str:
        """'[3] Title' for a candidate, 'Title' otherwise (titles shortened to ``width``)."""
        title = self.data.title(item)
        title = title if len(title) <= width else title[:width - 1] + "…"
        if item in context.candidates:
            return f"[{context.candidates.index(item) + 1}] {title}"
        return title

    def category(self, item: int) -> str | None:
        path = self.data.items[item].get("categories") or []
        return path[-1] if path else None

    def resolve(self, reference, context: ToolContext) -> int:
        """An item from a title (exact or fuzzy) or a candidate number."""
        if isinstance(reference, bool) or not isinstance(reference, (str, int)):
            raise ToolError(f"expected an item title or a candidate number, got {type(reference).__name__}")
        text = str(reference).strip().strip("[]").strip()
        if not text:
            raise ToolError("empty item name")
        history_ref = re.fullmatch(r"[hH](\d{1,3})", text)
        if history_ref:  # "h3": the third history item, as the prompt numbers them
            number = int(history_ref[1])
            if not 1 <= number <= len(context.history):
                raise ToolError(f"there is no history item {number} (history items are h1..h{len(context.history)})")
            return context.history[number - 1]
        if re.fullmatch(r"\d{1,3}", text):
            number = int(text)
            if not 1 <= number <= len(context.candidates):
                raise ToolError(f"there is no candidate {number} (candidates are 1..{len(context.candidates)})")
            return context.candidates[number - 1]
        item = self.titles.find(text)
        if item is None:
            raise ToolError(f"no item matches {text[:60]!r}")
        return item


def _check_arguments(tool: Tool, arguments) -> dict:
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    unexpected = sorted(set(arguments) - set(tool.parameters))
    if unexpected:
        raise ToolError(f"{tool.name} takes no argument {unexpected[0][:40]!r}")
    missing = [name for name in tool.required if name not in arguments]
    if missing:
        raise ToolError(f"{tool.name} needs the argument {missing[0]!r}")
    return arguments


def _truncate(text: str) -> str:
    if len(text) <= MAX_OBSERVATION_CHARS:
        return text
    return text[:MAX_OBSERVATION_CHARS] + f" … (truncated, {len(text) - MAX_OBSERVATION_CHARS} more characters)"


class TitleIndex:
    """Title lookup: exact match on a normalised title, else the best token overlap (Jaccard >= 0.5)."""

    def __init__(self, data: Dataset):
        self.data = data
        self.exact: dict[str, int] = {}
        self.by_token: dict[str, list[int]] = {}
        self.tokens: list[frozenset[str]] = []
        for i in range(len(data.items)):
            tokens = frozenset(self.tokenize(data.items[i].get("title") or ""))
            self.tokens.append(tokens)
            if data.has_title(i):
                self.exact.setdefault(self.normalise(data.items[i]["title"]), i)
                for token in tokens:
                    self.by_token.setdefault(token, []).append(i)
        self.df = {t: len(items) for t, items in self.by_token.items()}

    @staticmethod
    def normalise(text: str) -> str:
        return " ".join(re.findall(r"\w+", text.casefold()))

    @classmethod
    def tokenize(cls, text: str) -> list[str]:
        return cls.normalise(text).split()

    def find(self, text: str) -> int | None:
        exact = self.exact.get(self.normalise(text))
        if exact is not None:
            return exact
        query = frozenset(self.tokenize(text))
        rare = sorted((t for t in query if t in self.df), key=lambda t: (self.df[t], t))[:3]  # candidates share one
        pool = {i for t in rare for i in self.by_token[t][:5000]}
        scored = [(len(query & self.tokens[i]) / len(query | self.tokens[i]), -i) for i in pool]
        best = max(scored, default=None)
        return -best[1] if best and best[0] >= 0.5 else None

    def keywords(self, item: int, n: int = 2) -> list[str]:
        """The item's n most distinctive title words (rarest first): a category stand-in for title-only data."""
        words = [t for t in self.tokens[item] if t not in STOPWORDS and not t.isdigit() and len(t) > 2]
        # ties by the word itself: a set's order changes with each process's string-hash seed
        return sorted(words, key=lambda t: (self.df.get(t, 0) == 1, self.df.get(t, 0) < 3, -self.df.get(t, 0), t))[:n]


# --------------------------------------------------------------------------------------------------------------------
# The seven tools
# --------------------------------------------------------------------------------------------------------------------


def profile_key(context: ToolContext) -> str:
    return json.dumps([context.user, list(context.history)])


def get_user_profile(box: Toolbox, ctx: ToolContext) -> str:
    """Offline profile: the one the backbone LLM wrote for this (user, history) when the toolbox holds it
    (``agenticrec.profiles``), else statistics of the history's metadata."""
    if profile_key(ctx) in box.profiles:
        return box.profiles[profile_key(ctx)]
    lines = [f"{len(ctx.history)} past items."]
    lines.append(_interest_line(box, list(ctx.history), "Long-term interests"))
    brands = Counter(b for i in ctx.history if (b := box.data.items[i].get("brand")))
    if brands:
        lines.append("Brands: " + ", ".join(f"{b} ({n})" for b, n in brands.most_common(3)) + ".")
    prices = [p for i in ctx.history if (p := box.data.items[i].get("price")) is not None]
    if prices:
        lines.append(f"Price range: ${min(prices):.2f}-${max(prices):.2f} (median ${np.median(prices):.2f}).")
    popular = np.median([box.pop_rank[i] for i in ctx.history])
    lines.append(f"Typical popularity rank of past items: {int(popular)} of {len(box.data.items)}.")
    return " ".join(lines)


def _interest_line(box: Toolbox, items: list[int], label: str) -> str:
    categories = Counter(c for i in items if (c := box.category(i)))
    if categories:
        return f"{label} (categories): " + ", ".join(f"{c} ({n})" for c, n in categories.most_common(3)) + "."
    words = Counter(w for i in items for w in box.keywords[i])
    shown = ", ".join(f"{w} ({n})" for w, n in words.most_common(4)) or "none"
    return f"{label} (title keywords; no categories in this dataset): {shown}."


def item_info_search(box: Toolbox, ctx: ToolContext, item_name) -> str:
    item = box.resolve(item_name, ctx)
    record = box.data.items[item]
    parts = [box.label(item, ctx, width=120)]
    missing = []
    for key, show in (("categories", lambda v: " > ".join(v)), ("brand", str), ("price", lambda v: f"${v:.2f}"),
                      ("average_rating", lambda v: f"{v:.1f}/5" + (f" from {record['rating_count']} ratings"
                                                                     if record.get("rating_count") else ""))):
        if record.get(key) is not None:
            parts.append(f"{key.replace('average_', '')}: {show(record[key])}")
        else:
            missing.append(key.replace("average_", ""))
    parts.append(f"popularity: {box.popularity[item]} past interactions (rank {box.pop_rank[item]} of "
                 f"{len(box.data.items)})")
    text = "; ".join(parts) + "."
    return text + (f" Not available in this dataset: {', '.join(missing)}." if missing else "")


def candidates_analyze(box: Toolbox, ctx: ToolContext) -> str:
    """The candidates grouped by category with prices, and their past interactions (most first)."""
    counts = [float(box.popularity[c]) for c in ctx.candidates]
    lines = []
    if any(box.category(c) for c in ctx.candidates):
        groups: dict[str, list[int]] = {}
        for n, c in enumerate(ctx.candidates, 1):
            groups.setdefault(box.category(c) or "uncategorised", []).append(n)
        for key, numbers in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            entries = ", ".join(f"[{n}]{_price(box, ctx.candidates[n - 1])}" for n in numbers)
            lines.append(f"{key} ({len(numbers)}): {entries}")
    else:
        lines.append("No categories in this dataset.")
    lines.append("Past interactions, most first: " + ", ".join(f"{c:.0f}" for c in sorted(counts, reverse=True)))
    return "\n".join(lines)


def _price(box: Toolbox, item: int) -> str:
    price = box.data.items[item].get("price")
    return f" ${price:.0f}" if price is not None else ""


def get_session_behavior(box: Toolbox, ctx: ToolContext) -> str:
    sessions = _sessions(ctx)
    how = "sessions split at gaps over one day" if ctx.history_timestamps else \
        "no timestamps in this dataset: consecutive groups of 3 items"
    lines = [f"{len(sessions)} sessions ({how}), oldest first:"]
    for n, session in enumerate(sessions, 1):
        lines.append(f"{n}. " + _interest_line(box, session, f"{len(session)} items").rstrip("."))
    return "\n".join(lines)


def _sessions(ctx: ToolContext) -> list[list[int]]:
    history = list(ctx.history)
    if not ctx.history_timestamps:
        return [history[i:i + 3] for i in range(0, len(history), 3)]
    sessions, last = [], None
    for item, ts in zip(history, ctx.history_timestamps):
        if last is None or ts - last > 86_400_000:
            sessions.append([])
        sessions[-1].append(item)
        last = ts
    return sessions


def get_rating_behavior(box: Toolbox, ctx: ToolContext) -> str:
    if not ctx.history_ratings:
        return "Ratings are not available in this dataset."
    groups = {"high (4-5)": [], "medium (3)": [], "low (1-2)": []}
    for item, rating in zip(ctx.history, ctx.history_ratings):
        key = "high (4-5)" if rating >= 4 else "medium (3)" if rating >= 3 else "low (1-2)"
        groups[key].append(box.label(item, ctx, width=50))
    return "\n".join(f"{k}: {'; '.join(v) if v else 'none'}" for k, v in groups.items())


def get_similar_items(box: Toolbox, ctx: ToolContext, item_title) -> str:
    item = box.resolve(item_title, ctx)
    sims = box.item_vectors @ box.item_vectors[item]  # cosine of SASRec item embeddings (train data only)
    scores = [float(sims[c]) for c in ctx.candidates]
    sims[item] = -np.inf
    top = np.argpartition(-sims, 3)[:3]
    neighbours = "; ".join(box.label(int(i), ctx, width=50) for i in top[np.argsort(-sims[top])])
    return (f"Most similar to {box.label(item, ctx, width=50)}: {neighbours}.\n"
            f"Cosine, most similar first: {', '.join(f'{s:.2f}' for s in sorted(scores, reverse=True))}")


def get_similar_users(box: Toolbox, ctx: ToolContext) -> str:
    if not ctx.history:
        raise ToolError("the user has no history")
    sims = (box.user_vectors @ torch.from_numpy(box.user_vector(ctx.history))).numpy()  # torch: threaded BLAS
    k = min(6, len(sims))  # the user may be among the 6 nearest: 5 others remain
    top = np.argpartition(-sims, k - 1)[:k]
    neighbours = [j for j in top[np.argsort(-sims[top])] if box.neighbour_users[j] != ctx.user][:5]
    counts = Counter(c for j in neighbours for c in box.neighbour_recent[j] if c in ctx.candidates)
    recent = Counter(i for j in neighbours for i in box.neighbour_recent[j])
    shown = "; ".join(box.label(i, ctx, width=40) for i, _ in recent.most_common(5))
    picked = ", ".join(f"[{ctx.candidates.index(c) + 1}] x{n}" for c, n in counts.most_common()) or "none"
    return f"Recent items of the 5 most similar users: {shown}.\nCandidates among them: {picked}."


ITEM_ARG = {"type": ["string", "integer"],
            "description": "an item title, a candidate number, or h<k> for the k-th history item"}
TOOLS = [
    Tool("get_user_profile", "The user's long-term profile: main interests, brands, price range, popularity taste.",
         {}, (), get_user_profile),
    Tool("item_info_search", "Metadata of one item: category, brand, price, rating and popularity.",
         {"item_name": ITEM_ARG}, ("item_name",), item_info_search),
    Tool("candidates_analyze", "Overview of the candidate set: by category with prices, and by popularity.",
         {}, (), candidates_analyze),
    Tool("get_session_behavior", "How the user's interests moved over recent sessions.", {}, (),
         get_session_behavior),
    Tool("get_rating_behavior", "The user's past items grouped by the rating the user gave.", {}, (),
         get_rating_behavior),
    Tool("get_similar_items", "Items similar to a given item (collaborative signal), and the most similar "
         "candidates.", {"item_title": ITEM_ARG}, ("item_title",), get_similar_items),
    Tool("get_similar_users", "Recent items of users with similar histories, and which candidates they chose.",
         {}, (), get_similar_users),
]
COLLABORATIVE = {"get_similar_items", "get_similar_users"}
