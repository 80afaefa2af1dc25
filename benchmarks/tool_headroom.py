"""The headroom a tool-using policy can find under the CPU preset: which evidence to act on, per user.

    python benchmarks/tool_headroom.py [--dataset games] [--split valid] [--limit 2000]

For each instance it calls three of the preset's ranking tools as the agent would (``candidates_analyze``:
popularity; ``get_similar_users``: the similar users' taste; ``get_similar_items`` on the latest history item: its
similarity) and ranks the target by each tool's ordering line copied verbatim; beside them the co-occurrence
baseline (how often a candidate followed or preceded a history item in train sequences: the order of the preset's
fourth ranking tool, ``get_session_behavior``) and SASRec. It prints, with 95 % bootstrap CIs:

1. each order copied, and the per-instance oracles (instance by instance the best order: what a policy that always
   picked the right evidence would score, knowing the answer);
2. on the second half of the instances, selectors fitted on the first half, each against the best single order
   there (paired CI of the difference): the best threshold rule on one feature the agent can read, a linear
   selector over all of them (softmax over the orders, trained to maximise the expected NDCG@10 of the order it
   picks), and the same two with co-occurrence as a fourth order whose signal is a feature (also against
   co-occurrence alone, the order of ``get_session_behavior``);
3. against SASRec (paired CI): the best of those choices written as a fixed rule, and orders that MERGE two
   sources (co-occurrence first, its ties broken by the similar users' taste or by SASRec), which no choice of
   one order can give;
4. against co-occurrence alone (paired CI): those merges, and co-occurrence with its ties broken by how many
   history items share the candidate's category (evidence the paper's tools show where a dataset has categories,
   which Beauty has and Games has not).

Features the agent can read: the history's length; whether the similar users picked a candidate; the top popularity
count over the second; the top cosine of the latest item's similarity; where each tool's first candidate sits in
the other tools' orders; how many candidates the three tools' top 3 share; for co-occurrence, the total, top and
margin of its counts and how many candidates have any. Nothing here trains a language model; SASRec is loaded from
its cache (trained on first use). ~1 minute on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections import Counter

import numpy as np
import torch

from agenticrec import baselines, preset
from agenticrec.data import load_dataset
from agenticrec.sasrec import TrainConfig, load_or_train, score_candidates
from agenticrec.stats import bootstrap_ci, paired_bootstrap
from agenticrec.tools import context_for
from agenticrec.warmstart import ordering_of

TOOLS = {"popularity": ("candidates_analyze", lambda x: {}),
         "similar users' taste": ("get_similar_users", lambda x: {}),
         "latest item's similarity": ("get_similar_items", lambda x: {"item_title": f"h{len(x.history)}"})}
COOCCURRENCE = "co-occurrence (baseline)"


def ndcg10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)


def hit1(ranks: np.ndarray) -> np.ndarray:
    return (ranks == 1).astype(float)


def tool_evidence(data, box, instances) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """{order: the target's 1-based rank per instance} for the three tools' ordering lines, and {feature: value per
    instance} for what the agent reads in its prompt and the tools' observations."""
    ranks = {name: [] for name in TOOLS}
    features: dict[str, list] = {"history length": [], "similar users picked a candidate": [],
                                 "top popularity / second": [], "top cosine": [], "top-3 shared by all": []}
    for x in instances:
        ctx, texts, orders = context_for(x, data), {}, {}
        for name, (tool, arguments) in TOOLS.items():
            texts[name] = box.call(tool, arguments(x), ctx).text
            orders[name] = ordering_of(texts[name])
            ranks[name].append(orders[name].index(x.candidates.index(x.target) + 1) + 1)
        counts = [int(n) for n in re.search(r"most first: ([\d, ]+)", texts["popularity"]).group(1).split(", ")]
        cosine = float(re.search(r"most similar first: (-?[\d.]+)", texts["latest item's similarity"]).group(1))
        features["history length"].append(len(x.history))
        features["similar users picked a candidate"].append(
            float("Candidates among them: none" not in texts["similar users' taste"]))
        features["top popularity / second"].append(counts[0] / max(counts[1], 1))
        features["top cosine"].append(cosine)
        features["top-3 shared by all"].append(len(set.intersection(*(set(o[:3]) for o in orders.values()))))
        for a, b in itertools.permutations(TOOLS, 2):
            features.setdefault(f"{a}'s first in {b}", []).append(orders[b].index(orders[a][0]))
    return {k: np.array(v) for k, v in ranks.items()}, {k: np.array(v, dtype=float) for k, v in features.items()}


def cooccurrence_scores(data, instances) -> list[list[int]]:
    """Each candidate's co-occurrence count with the history (the co-occurrence baseline's score)."""
    neighbours = baselines.cooccurrence(data)
    return [[sum(neighbours[h][c] for h in x.history) for c in x.candidates] for x in instances]


def merged_ranks(instances, *keys: list[list[float]]) -> np.ndarray:
    """The target's rank when candidates are ordered by the first of ``keys``, its ties by the next, and so on
    (higher is better; per instance one score per candidate)."""
    ranks = []
    for x, *scores in zip(instances, *keys):
        order = sorted(range(len(x.candidates)), key=lambda j: (*(-s[j] for s in scores), j))
        ranks.append(order.index(x.candidates.index(x.target)) + 1)
    return np.array(ranks)


def category_scores(box, instances) -> list[list[int]]:
    """How many history items share each candidate's category (the categories ``get_user_profile`` and
    ``get_session_behavior`` show; 0 everywhere on a dataset without categories, e.g. Games)."""
    scores = []
    for x in instances:
        history = Counter(c for h in x.history if (c := box.category(h)))
        scores.append([history[c] if (c := box.category(item)) else 0 for item in x.candidates])
    return scores


def cooccurrence_evidence(data, instances, cooc: list[list[int]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The target's rank in the co-occurrence order, and the signal's features (log1p of total, top, margin, and
    how many candidates have any) from the candidates' counts ``cooc``."""
    scores = [sorted(s) for s in cooc]
    features = {"co-occurrence total": [sum(s) for s in scores], "co-occurrence top": [s[-1] for s in scores],
                "co-occurrence margin": [s[-1] - s[-2] for s in scores],
                "candidates with co-occurrence": [sum(v > 0 for v in s) for s in scores]}
    ranks = np.array(baselines.target_ranks(data, instances, baselines.cooccurrence_scorer(data)))
    return ranks, {k: np.log1p(np.array(v, dtype=float)) for k, v in features.items()}


def threshold_rule(ranks: dict[str, np.ndarray], features: dict[str, np.ndarray], fit: slice):
    """The rule "order A if feature > t, else order B" with the best mean NDCG@10 on ``fit`` (t: midpoints of the
    feature's distinct values there). Returns (its description, the rank it gives every instance)."""
    best = (-1.0, "", None)
    for feature, values in features.items():
        distinct = np.unique(values[fit])
        for t in (distinct[:-1] + distinct[1:]) / 2:
            for a, b in itertools.permutations(ranks, 2):
                chosen = np.where(values > t, ranks[a], ranks[b])
                score = ndcg10(chosen[fit]).mean()
                if score > best[0]:
                    best = (score, f"{a} if {feature} > {t:.3g}, else {b}", chosen)
    return best[1], best[2]


def linear_selector(ranks: dict[str, np.ndarray], features: dict[str, np.ndarray], fit: slice,
                    weight_decay: float = 1e-2) -> np.ndarray:
    """Per instance the order a linear softmax policy over the standardised features picks (argmax), trained on
    ``fit`` to maximise the expected NDCG@10 of its pick (a contextual bandit with full feedback)."""
    x = np.column_stack(list(features.values()))
    x = torch.tensor((x - x[fit].mean(0)) / (x[fit].std(0) + 1e-9), dtype=torch.float32)
    gains = torch.tensor(np.column_stack([ndcg10(r) for r in ranks.values()]), dtype=torch.float32)
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], gains.shape[1])
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.05, weight_decay=weight_decay)
    for _ in range(500):
        loss = -(layer(x[fit]).softmax(-1) * gains[fit]).sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    pick = layer(x).argmax(-1).numpy()
    return np.column_stack(list(ranks.values()))[np.arange(len(pick)), pick]


def cell(values: np.ndarray) -> str:
    ci = bootstrap_ci(values)
    return f"{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def table(rows: dict[str, np.ndarray], against: np.ndarray | None = None, label: str = "best order") -> None:
    """H@1 and N@10 per row; with ``against``, the paired differences of H@1 and N@10 from it."""
    extra = f" | H@1 - {label} | N@10 - {label}" if against is not None else ""
    print(f"| order | n | H@1 | N@10{extra} |\n|---|---|---|---{'|---|---' if extra else ''}|")
    for name, r in rows.items():
        line = f"| {name} | {len(r)} | {cell(hit1(r))} | {cell(ndcg10(r))}"
        if against is not None:
            diffs = [paired_bootstrap(m(against), m(r)) for m in (hit1, ndcg10)]
            line += "".join(f" | {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" for d in diffs)
        print(line + " |")
    print()


def held_out_selectors(ranks: dict, features: dict, with_cooc: dict, all_features: dict, fit: slice,
                       held: slice) -> None:
    """Selectors fitted on the ``fit`` instances, measured on the ``held`` ones: against the best of the three tools'
    orders, and those that may pick co-occurrence against co-occurrence alone (``get_session_behavior``'s order)."""
    best = max(ranks, key=lambda name: ndcg10(ranks[name][fit]).mean())
    rule, chosen = threshold_rule(ranks, features, fit)
    rule_cooc, chosen_cooc = threshold_rule(with_cooc, all_features, fit)
    linear_cooc = linear_selector(with_cooc, all_features, fit)
    span = f"fitted on instances 1-{fit.stop}, measured on {held.start + 1}-{held.stop}"
    print(f"selectors {span}; the best single order on the first half: {best}\n")
    table({f"{best}, copied": ranks[best][held],
           f"threshold rule: {rule}": chosen[held],
           "linear selector over the three tools": linear_selector(ranks, features, fit)[held],
           f"threshold rule with co-occurrence: {rule_cooc}": chosen_cooc[held],
           "linear selector with co-occurrence": linear_cooc[held],
           "oracle over the three tools": np.min(list(ranks.values()), axis=0)[held],
           "oracle over the three tools and co-occurrence": np.min(list(with_cooc.values()), axis=0)[held]},
          against=ranks[best][held])
    print(f"the selectors with co-occurrence against co-occurrence alone, {span}\n")
    table({f"threshold rule with co-occurrence: {rule_cooc}": chosen_cooc[held],
           "linear selector with co-occurrence": linear_cooc[held]},
          against=with_cooc[COOCCURRENCE][held], label="co-occurrence")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="games")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    sasrec = load_or_train(data, data.fixed_instances("valid"), train_cfg=TrainConfig(**preset.SASREC_TRAIN))
    instances = data.fixed_instances(args.split)[:args.limit]
    box = preset.PresetToolbox(data, sasrec)
    ranks, features = tool_evidence(data, box, instances)
    cooc = cooccurrence_scores(data, instances)
    cooc_ranks, cooc_features = cooccurrence_evidence(data, instances, cooc)
    with_cooc, all_features = {**ranks, COOCCURRENCE: cooc_ranks}, {**features, **cooc_features}
    n = len(instances)
    fit, held = slice(0, n // 2), slice(n // 2, n)

    print(f"{args.dataset}, {args.split} split, first {n} instances: the target's rank in each order\n")
    sasrec_scores = score_candidates(sasrec, instances)
    sasrec_ranks = np.array(baselines.target_ranks(data, instances, lambda xs: sasrec_scores))
    table({**{f"{name}, copied": r for name, r in ranks.items()}, COOCCURRENCE: cooc_ranks,
           "SASRec (baseline)": sasrec_ranks,
           "oracle over the three tools": np.min(list(ranks.values()), axis=0),
           "oracle over the three tools and co-occurrence": np.min(list(with_cooc.values()), axis=0)})

    held_out_selectors(ranks, features, with_cooc, all_features, fit, held)

    top_two = [sorted(counts)[-2:] for counts in cooc]
    differ = np.array([second < top for second, top in top_two])  # co-occurrence names one best candidate
    taste = [preset.ORDERING_SCORES["get_similar_users"][1](box, context_for(x, data), {}) for x in instances]
    print(f"against SASRec, all {n} instances: choosing one order, and merging two\n")
    table({"co-occurrence if its top two counts differ, else similar users' taste":
           np.where(differ, cooc_ranks, ranks["similar users' taste"]),
           "co-occurrence if its top two counts differ, else SASRec": np.where(differ, cooc_ranks, sasrec_ranks),
           "merged: co-occurrence, ties by the similar users' taste": merged_ranks(instances, cooc, taste),
           "merged: co-occurrence, ties by SASRec": merged_ranks(instances, cooc, sasrec_scores)},
          against=sasrec_ranks, label="SASRec")

    popularity = baselines.popularity_scorer(data)(instances)
    categories = category_scores(box, instances)
    print(f"against co-occurrence alone (its ties broken by popularity, as in every baseline), all {n} instances: "
          f"merges of the evidence the paper's tools give ({sum(any(s) for s in categories)} instances have a "
          "candidate in a history item's category)\n")
    table({"merged: co-occurrence, ties by the similar users' taste": merged_ranks(instances, cooc, taste, popularity),
           "merged: co-occurrence, ties by SASRec": merged_ranks(instances, cooc, sasrec_scores),
           "merged: co-occurrence, ties by the history's categories, then popularity":
               merged_ranks(instances, cooc, categories, popularity)},
          against=cooc_ranks, label="co-occurrence")


if __name__ == "__main__":
    main()
