"""Datasets in one on-disk format, the split protocols, and the fixed evaluation instances.

A dataset is a folder ``data/<name>/`` (docs/data.md has the full description), written by a converter
(``agenticrec.convert``) or imported from RecBole atomic files or any interaction table (``agenticrec.importer``);
scripts take it by name or by its folder (``dataset_folder``):

    meta.json              name, source, licence, split protocol, and the counts of the conversion
    items.jsonl.gz         {"id": 0, "title": "...", "categories": [...], "brand", "price", "average_rating",
                            "rating_count", "description", "source_id"}   (only the fields the source has)
    sequences.jsonl.gz     {"user": "...", "items": [ids, oldest first], "timestamps": [ms], "ratings": [...]}
      or windows.jsonl.gz  {"user": "...", "history": [ids], "target": id, "split": "valid" | "test"}
    instances/<split>.jsonl.gz
                           {"user", "position", "history": [<= 10 ids], "target": id, "candidates": [N ids]}

Split protocols (``meta["split"]``):
- ``leave_one_out``: per user, last item = test, second-to-last = valid, the rest = train (sources without
  timestamps, and the official 2023 ``last_out`` benchmark files).
- ``global_time``: every interaction is assigned by its timestamp against the global cut points
  ``meta["valid_from"]`` / ``meta["test_from"]`` (the paper's chronological 8:1:1; ``prepare-amazon2023``);
  train instances are the train interactions after ``meta["fit_until"]`` (the last eighth of the train period).
- ``windows``: rows that already carry a history, a target and a split (MiniOneRec's Office_Products, which has
  no train split: evaluation only).

``training_sequences`` is the only door through which SASRec, popularity and co-occurrence see interactions,
and it returns train-split interactions only.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("agenticrec.data")

DATA_ROOT = Path(__file__).resolve().parents[1] / "data"
SPLITS = ("train", "valid", "test")
MAX_HISTORY = 10
DEFAULT_CANDIDATES = 20
ITEM_FIELDS = ("title", "categories", "brand", "price", "average_rating", "rating_count", "description")


class DataError(ValueError):
    """A dataset file that cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------------------------
# Text files
# --------------------------------------------------------------------------------------------------------------------


class LineSkips:
    """Counts the lines of one file and the malformed ones among them: each skip is logged with file:line, and
    more than ``max_bad_fraction`` of them is a ``DataError`` at ``close`` (the file is probably not what it
    claims to be)."""

    def __init__(self, path: Path, max_bad_fraction: float = 0.01):
        self.path, self.max_bad_fraction = path, max_bad_fraction
        self.total = self.bad = 0

    def good(self) -> None:
        self.total += 1

    def skip(self, line_no: int, why: str) -> None:
        self.total += 1
        self.bad += 1
        log.warning("%s:%d: skipped malformed line (%s)", self.path, line_no, why[:80])

    def close(self) -> None:
        if self.bad:
            log.warning("%s: skipped %d malformed line(s) of %d", self.path, self.bad, self.total)
            if self.bad > self.max_bad_fraction * self.total:
                raise DataError(f"{self.path}: {self.bad} of {self.total} lines are malformed")


def open_text(path: Path):
    """A UTF-8 text file (a byte-order mark is dropped), gunzipped when its name ends in .gz."""
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="") if path.suffix == ".gz" else \
        open(path, encoding="utf-8-sig", newline="")


def read_jsonl(path: Path, max_bad_fraction: float = 0.01) -> Iterator[dict]:
    """Yield the JSON objects of a (gzipped) JSON-lines file. Malformed lines are skipped, counted and logged;
    more than ``max_bad_fraction`` of them is a ``DataError`` (the file is probably not what it claims)."""
    skips = LineSkips(path, max_bad_fraction)
    for _, record in json_records(path, skips):
        skips.good()
        yield record
    skips.close()


def json_records(path: Path, skips: LineSkips) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON object of a (gzipped) JSON-lines file; a malformed line goes to
    ``skips`` (the caller counts the good ones and closes it)."""
    try:
        with open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except ValueError as err:
                    skips.skip(line_no, str(err))
                    continue
                yield line_no, record
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err})") from None


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call: write it, then ``replace`` it onto
    ``path`` (atomic), so that concurrent writers (ranks, runs sharing a cache) never write the same file."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Write records as gzipped JSON lines, atomically (temp file + rename). The bytes depend on the records only:
    mtime 0, and the name in the gzip header is fixed (``<name>.tmp``, as every shipped file has), not the
    temporary file's unique name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    n = 0
    with open(tmp, "wb") as raw, gzip.GzipFile(f"{path.name}.tmp", mode="wb", fileobj=raw, mtime=0) as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
            n += 1
    tmp.replace(path)
    return n


# --------------------------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Sequence:
    user: str
    items: list[int]
    timestamps: list[int] | None = None
    ratings: list[float] | None = None


@dataclass
class Window:
    user: str
    history: list[int]
    target: int
    split: str


@dataclass
class Instance:
    """One ranking task: the user's history before the target and a shuffled candidate set holding the target."""

    user: str
    history: list[int]
    target: int
    candidates: list[int]
    position: int | None = None  # index of the target in the user's sequence (None for window datasets)
    split: str = "test"

    def to_json(self) -> dict:
        return {"user": self.user, "position": self.position, "history": self.history, "target": self.target,
                "candidates": self.candidates}


@dataclass
class Dataset:
    name: str
    meta: dict
    items: list[dict]
    sequences: list[Sequence] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    folder: Path | None = None  # where load_dataset read it from (None: built in memory)
    _by_user: dict | None = field(default=None, repr=False)

    @property
    def protocol(self) -> str:
        return self.meta["split"]

    def title(self, item: int) -> str:
        """What prompts show for an item: its title, or a neutral description when the source has none."""
        record = self.items[item]
        if record.get("title"):
            return record["title"]
        path = record.get("categories") or []
        return f"Untitled item ({' > '.join(path)})" if path else "Untitled item"

    def has_title(self, item: int) -> bool:
        return bool(self.items[item].get("title"))

    def fixed_instances(self, split: str, num_candidates: int = DEFAULT_CANDIDATES) -> list[Instance]:
        """The instance file of a split (``load_instances``), from the folder this dataset was loaded from."""
        return load_instances(self.folder or self.name, split, num_candidates)

    def sequence_of(self, user: str) -> Sequence:
        if self._by_user is None:
            self._by_user = {s.user: s for s in self.sequences}
        return self._by_user[user]

    def split_of(self, seq: Sequence, position: int) -> str:
        if self.protocol == "leave_one_out":
            return SPLITS[max(0, position - len(seq.items) + 3)]  # ..., train, valid (n-2), test (n-1)
        if self.protocol == "global_time":
            ts = seq.timestamps[position]
            return "test" if ts >= self.meta["test_from"] else "valid" if ts >= self.meta["valid_from"] else "train"
        raise DataError(f"{self.name}: split_of needs sequences, the protocol is {self.protocol}")


def dataset_folder(name_or_path: str | Path, root: Path = DATA_ROOT) -> Path:
    """The folder of a dataset given by name (``root/<name>``) or by a path to a dataset folder; a name wins over
    a same-named folder in the working directory."""
    named, path = root / str(name_or_path), Path(name_or_path)
    return path if not (named / "meta.json").is_file() and (path / "meta.json").is_file() else named


def load_dataset(name_or_path: str | Path, root: Path = DATA_ROOT) -> Dataset:
    folder = dataset_folder(name_or_path, root)
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        known = sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file()) if root.is_dir() else []
        raise DataError(f"dataset {name_or_path!r} not found (no {meta_file}); known: {', '.join(known)}")
    meta = json.loads(meta_file.read_text())
    items = list(read_jsonl(folder / "items.jsonl.gz"))
    if [r.get("id") for r in items] != list(range(len(items))):
        raise DataError(f"{folder}/items.jsonl.gz: ids must be 0..n-1 in order")
    data = Dataset(meta["name"], meta, items, folder=folder)
    if meta["split"] == "windows":
        data.windows = [Window(str(r["user"]), list(r["history"]), int(r["target"]), r["split"])
                        for r in read_jsonl(folder / "windows.jsonl.gz")]
    else:
        data.sequences = [Sequence(str(r["user"]), list(r["items"]), r.get("timestamps"), r.get("ratings"))
                          for r in read_jsonl(folder / "sequences.jsonl.gz")]
    _check_ids(data, folder)
    return data


def global_time_cuts(timestamps: Iterable[int], fractions=(0.8, 0.1, 0.1)) -> dict:
    """The cut points of the chronological split (the paper's 8:1:1): ``valid_from`` / ``test_from`` are the
    timestamps at the 80 % / 90 % quantiles of all interactions, ``fit_until`` the one at 7/8 of the train period
    (the collaborative tools fit before it; train instances are the interactions from it to ``valid_from``)."""
    times = sorted(timestamps)

    def at(fraction: float) -> int:
        return times[min(len(times) - 1, int(fraction * len(times)))]

    return {"fit_until": at(fractions[0] * 7 / 8), "valid_from": at(fractions[0]),
            "test_from": at(fractions[0] + fractions[1])}


def _check_ids(data: Dataset, folder: Path) -> None:
    n = len(data.items)
    used = [i for s in data.sequences for i in s.items] + [i for w in data.windows for i in (*w.history, w.target)]
    if used and not (0 <= min(used) and max(used) < n):
        raise DataError(f"{folder}: interactions reference item ids outside 0..{n - 1}")


def training_sequences(data: Dataset) -> list[list[int]]:
    """The sequences of ``training_sequences_by_user``."""
    return [seq for _, seq in training_sequences_by_user(data)]


def training_sequences_by_user(data: Dataset) -> list[tuple[str, list[int]]]:
    """What SASRec, popularity and co-occurrence learn from: train-split interactions that come before the target
    of EVERY instance, train instances included (a tool fitted on a train instance's own target transition would
    teach the policy to trust it more than it deserves at test time).

    - leave_one_out: each sequence minus its last three items (the train, valid and test targets);
    - global_time: the interactions before ``fit_until`` (train instances come from [fit_until, valid_from));
    - windows (no train split): the valid rows (history + target), which all precede the test period; only the
      test split may then be evaluated.
    """
    if data.protocol == "leave_one_out":
        return [(s.user, s.items[:-3]) for s in data.sequences if len(s.items) > 3]
    if data.protocol == "global_time":
        cut = data.meta["fit_until"]
        out = [(s.user, [i for i, t in zip(s.items, s.timestamps) if t < cut]) for s in data.sequences]
        return [(user, seq) for user, seq in out if seq]
    return [(w.user, w.history + [w.target]) for w in data.windows if w.split == "valid"]


# --------------------------------------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------------------------------------


def target_positions(data: Dataset, split: str) -> Iterator[tuple[int, int]]:
    """(sequence index, position of the target) of every instance of a split; the target needs >= 1 history item."""
    for s_idx, seq in enumerate(data.sequences):
        n = len(seq.items)
        if data.protocol == "leave_one_out":
            position = {"train": n - 3, "valid": n - 2, "test": n - 1}[split]
            if position >= 1:
                yield s_idx, position
        else:
            for position in range(1, n):
                in_fit_period = seq.timestamps[position] < data.meta["fit_until"]
                if data.split_of(seq, position) == split and not (split == "train" and in_fit_period):
                    yield s_idx, position


def build_instances(data: Dataset, split: str, num_candidates: int = DEFAULT_CANDIDATES, seed: int = 0,
                    max_history: int = MAX_HISTORY) -> tuple[list[Instance], dict]:
    """The instances of a split: history = the <= max_history items before the target, candidates = the target +
    (N - 1) negatives drawn uniformly from titled items the user never interacted with, shuffled. Deterministic in
    ``seed``. Returns (instances, counts of skipped targets by reason)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), num_candidates])
    titled = np.array([i for i in range(len(data.items)) if data.has_title(i)])
    skipped = {"untitled_target": 0, "too_few_negatives": 0}
    out = []
    for user, history, target, position, seen in _targets(data, split):
        if not data.has_title(target):
            skipped["untitled_target"] += 1  # a placeholder title must never reach a prompt as the answer
            continue
        negatives = _sample_negatives(rng, titled, seen, num_candidates - 1)
        if negatives is None:
            skipped["too_few_negatives"] += 1
            continue
        candidates = [target, *negatives]
        rng.shuffle(candidates)
        out.append(Instance(user, history[-max_history:], target, [int(c) for c in candidates], position, split))
    return out, skipped


def _targets(data: Dataset, split: str) -> Iterator[tuple[str, list[int], int, int | None, set[int]]]:
    if data.protocol == "windows":
        for w in data.windows:
            if w.split == split and w.history:
                yield w.user, w.history, w.target, None, set(w.history) | {w.target}
        return
    for s_idx, position in target_positions(data, split):
        seq = data.sequences[s_idx]
        yield seq.user, seq.items[:position], seq.items[position], position, set(seq.items)


def _sample_negatives(rng: np.random.Generator, pool: np.ndarray, exclude: set[int], k: int) -> list[int] | None:
    """k distinct items from ``pool`` outside ``exclude``, by rejection (the pool is far larger than exclude)."""
    if len(pool) - len(exclude) < k:
        return None
    chosen: list[int] = []
    taken = set(exclude)
    while len(chosen) < k:
        for item in pool[rng.integers(0, len(pool), size=2 * k)].tolist():
            if item not in taken:
                taken.add(item)
                chosen.append(item)
                if len(chosen) == k:
                    break
    return chosen


def instances_path(name: str | Path, split: str, num_candidates: int = DEFAULT_CANDIDATES,
                   root: Path = DATA_ROOT) -> Path:
    """The fixed instances of a dataset given by name or folder (``dataset_folder``)."""
    suffix = "" if num_candidates == DEFAULT_CANDIDATES else f".n{num_candidates}"
    return dataset_folder(name, root) / "instances" / f"{split}{suffix}.jsonl.gz"


def write_instances(data: Dataset, root: Path = DATA_ROOT, num_candidates: int = DEFAULT_CANDIDATES,
                    seed: int = 0, splits: Iterable[str] = SPLITS) -> dict:
    counts = {}
    for split in splits:
        instances, skipped = build_instances(data, split, num_candidates, seed)
        if not instances:
            continue
        write_jsonl(instances_path(data.folder or data.name, split, num_candidates, root),
                    (x.to_json() for x in instances))
        counts[split] = {"instances": len(instances), **{k: v for k, v in skipped.items() if v}}
    return counts


def load_instances(name: str, split: str, num_candidates: int = DEFAULT_CANDIDATES,
                   root: Path = DATA_ROOT) -> list[Instance]:
    """The fixed instances written by ``write_instances`` (so every evaluation sees the same candidates)."""
    path = instances_path(name, split, num_candidates, root)
    if not path.is_file():
        raise DataError(f"{path}: not found; build it with `python -m agenticrec.data instances {name} "
                        f"--candidates {num_candidates}`")
    return [Instance(str(r["user"]), r["history"], r["target"], r["candidates"], r.get("position"), split)
            for r in read_jsonl(path)]


def split_instances(data: Dataset, split: str, num_candidates: int = DEFAULT_CANDIDATES) -> list[Instance]:
    """A split's instances of size N: the fixed file when there is one (a corrupt file is an error, not rebuilt),
    else built by the same protocol and seed (deterministic), as files of every size would not fit in the
    repository."""
    if instances_path(data.folder or data.name, split, num_candidates).is_file():
        return data.fixed_instances(split, num_candidates)
    return build_instances(data, split, num_candidates)[0]


def interleaved_instances(data: Dataset, split: str, sizes: Iterable[int]) -> list[Instance]:
    """The instances of each candidate-set size in ``sizes``, interleaved (the first of each size, then the second
    of each, ...; a size with fewer instances drops out where it ends, nothing is cut). One size: its instances."""
    return interleave([split_instances(data, split, n) for n in sizes])


def parse_candidate_sizes(text: str) -> tuple[int, ...]:
    """``"20,50"`` -> (20, 50): distinct candidate-set sizes, each at least 2 (a ranking needs two candidates)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma list of integers") from None
    if any(n < 2 for n in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"{text!r}: the sizes must be distinct and at least 2")
    return sizes


def interleave(lists: list[list]) -> list:
    """The first of each list, then the second of each, ...; a shorter list drops out where it ends."""
    gap = object()  # fills the ends of shorter lists; never an item
    return [x for row in itertools.zip_longest(*lists, fillvalue=gap) for x in row if x is not gap]


# --------------------------------------------------------------------------------------------------------------------
# Statistics and the command line
# --------------------------------------------------------------------------------------------------------------------


def stats(data: Dataset, root: Path = DATA_ROOT) -> dict:
    users = {s.user for s in data.sequences} | {w.user for w in data.windows}
    if data.sequences:
        interactions = sum(len(s.items) for s in data.sequences)
        used_items = {i for s in data.sequences for i in s.items}
    else:
        interactions = len(data.windows)
        used_items = {i for w in data.windows for i in (*w.history, w.target)}
    out = {"users": len(users), "items": len(data.items), "items_interacted": len(used_items),
           "interactions": interactions, "train_interactions": sum(map(len, training_sequences(data)))}
    for split in SPLITS:
        path = instances_path(data.folder or data.name, split, root=root)
        out[f"{split}_instances"] = sum(1 for _ in read_jsonl(path)) if path.is_file() else 0
    if data.windows:
        for split in ("valid", "test"):
            rows = [w for w in data.windows if w.split == split]
            out[f"{split}_rows"], out[f"{split}_users"] = len(rows), len({w.user for w in rows})
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m agenticrec.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stats", help="users / items / interactions / instances per split")
    p.add_argument("name", help="dataset name under data/ (or a folder)")
    p = sub.add_parser("instances", help="(re)build the fixed instances of a dataset")
    p.add_argument("name")
    p.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES, help="candidate set size N")
    p.add_argument("--seed", type=int, default=0, help="seed for negatives and shuffling")
    from agenticrec import convert, importer
    convert.add_commands(sub)
    importer.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "stats":
        print(json.dumps(stats(load_dataset(args.name)), indent=2))
    elif args.command == "instances":
        print(json.dumps(write_instances(load_dataset(args.name), num_candidates=args.candidates, seed=args.seed)))
    else:
        args.run(args)


if __name__ == "__main__":
    try:
        main()
    except DataError as err:
        sys.exit(f"error: {err}")
