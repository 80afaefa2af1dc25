"""Bring your own data: RecBole atomic files or plain interaction tables in, a dataset folder out (docs/data.md).

    python -m agenticrec.data import ml-100k --inter ml-100k.inter --item ml-100k.item \\
        --item-columns title=movie_title,categories=class
    python -m agenticrec.data import shop --inter events.csv --columns user=customer,item=sku,time=ts \\
        --item products.jsonl --item-columns id=sku,title=name
    python -m agenticrec.data export games --out exported/          # the reverse: atomic files

A file's kind comes from its name: ``.inter`` / ``.item`` are RecBole atomic files (tab-separated, no quoting, a
typed header ``name:type`` with type token / token_seq / float / float_seq), ``.csv`` / ``.tsv`` / ``.jsonl`` plain
tables; each may end in ``.gz``. Columns are found under RecBole's names (``INTERACTION_COLUMNS``,
``ITEM_COLUMNS``) or named with ``--columns`` / ``--item-columns``; every other column is ignored and listed.

``import_dataset`` then, counting what each step removes (``meta.json["import"]``):
1. reads the interactions: malformed lines are skipped and logged with file:line (more than 1 % of a file is an
   error); when a time column is mapped, rows without a time are dropped and counted; a row with a history column
   (LLMRank's and AgentCF's ``item_id_list``) stands for its history's items, oldest first, then its own item;
2. keeps one interaction per (user, item): the earliest, ties to the first in the file (a repeat would put the
   target in its own history);
3. filters users with fewer than ``min_user_interactions`` interactions and, with ``k_core`` K, users and items
   with fewer than K, round after round until none is left (the K-core), reporting every round;
4. orders each user's interactions by time (stable: tied times keep the file order) or keeps the file order when
   there is no time, counting out-of-order and tied timestamps; times become milliseconds (``time_unit``);
5. numbers the items: the items table's order, then items met only in interactions (which have no title);
6. splits by ``global_time`` (the paper's chronological 8:1:1) when every interaction has a time, else by
   ``leave_one_out`` (``--split`` overrides), and writes the fixed instances (``convert.save``).
Items without a title stay in the sequences (a history may show them as "Untitled item") but are never a target
or a negative (``build_instances``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from agenticrec.convert import clean_text, item_record, save
from agenticrec.data import (DATA_ROOT, ITEM_FIELDS, DataError, Dataset, LineSkips, Sequence, global_time_cuts,
                             json_records, load_dataset, open_text)

log = logging.getLogger("agenticrec.importer")
csv.field_size_limit(2**31 - 1)

# role -> the column read when no --columns / --item-columns names another (RecBole's names)
INTERACTION_COLUMNS = {"user": "user_id", "item": "item_id", "time": "timestamp", "rating": "rating",
                       "history": "item_id_list"}
ITEM_COLUMNS = {"id": "item_id", "title": "title", "categories": "categories", "brand": "brand", "price": "price",
                "description": "description", "average_rating": "average_rating", "rating_count": "rating_count",
                "source_id": "source_id"}
ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
MS_FROM = {"s": 1000.0, "ms": 1.0}
SECONDS_BELOW = 1e11  # time_unit "auto": epoch seconds reach 1e11 in the year 5138, epoch ms passed it in 1973


@dataclass
class ImportConfig:
    name: str
    inter: Path | list[Path]  # several files (RecBole's benchmark split files) are read in order, as one table
    item: Path | None = None
    columns: dict = field(default_factory=dict)  # role -> column of the interactions file
    item_columns: dict = field(default_factory=dict)  # role -> column of the items file
    split: str = "auto"  # auto | global_time | leave_one_out
    min_user_interactions: int = 1
    k_core: int = 0
    time_unit: str = "auto"  # auto | s | ms
    licence: str = "not stated (imported by the user)"

    def __post_init__(self):
        self.inter = [Path(self.inter)] if isinstance(self.inter, (str, Path)) else [Path(p) for p in self.inter]
        self.item = Path(self.item) if self.item is not None else None


@dataclass
class Table:
    """A table's column names, the atomic type of each (empty for plain tables), and its rows."""

    path: Path
    columns: list[str]
    types: dict[str, str]
    rows: Iterator[tuple[int, dict]]  # (line number, {column: value as read})
    skips: LineSkips


# --------------------------------------------------------------------------------------------------------------------
# Reading tables
# --------------------------------------------------------------------------------------------------------------------


def table_kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = {".inter": "atomic", ".item": "atomic", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
            ".json": "jsonl"}.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise DataError(f"{path}: unknown table kind; name it .inter / .item (RecBole atomic), .csv, .tsv or .jsonl "
                        "(each may end in .gz)")
    return kind


def open_table(path: Path) -> Table:
    """The table's header and a generator of its rows. The generator skips (and reports to ``Table.skips``) only
    lines it cannot split into the header's fields; whoever reads a row calls ``skips.good`` or ``skips.skip``."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = table_kind(path)
    try:
        return _jsonl_table(path) if kind == "jsonl" else _delimited_table(path, kind)
    except UNREADABLE as err:
        raise unreadable(path, err) from None


def _delimited_table(path: Path, kind: str) -> Table:
    """Atomic files are split on tabs only (RecBole does not quote); CSV / TSV follow the csv module's quoting."""
    f = open_text(path)
    lines = (line.rstrip("\r\n").split("\t") for line in f) if kind == "atomic" else \
        csv.reader(f, delimiter="," if kind == "csv" else "\t")
    header = next(lines, None)
    if header is None or not any(h.strip() for h in header):
        f.close()
        raise DataError(f"{path}: empty file (no header line)")
    names, types = _header(path, header) if kind == "atomic" else ([h.strip() for h in header], {})
    skips = LineSkips(path)

    def rows():
        with f:
            for line_no, values in enumerate(lines, 2):
                line_no = lines.line_num if kind != "atomic" else line_no
                if not values or values == [""]:
                    continue
                if len(values) != len(names):
                    skips.skip(line_no, f"{len(values)} fields, the header has {len(names)}")
                    continue
                yield line_no, dict(zip(names, values))
    return Table(path, names, types, _readable(path, rows()), skips)


UNREADABLE = (OSError, EOFError, UnicodeDecodeError, csv.Error)


def unreadable(path: Path, err: Exception) -> DataError:
    return DataError(f"{path}: unreadable ({err}); tables must be UTF-8 text, gzipped or not")


def _readable(path: Path, rows: Iterator) -> Iterator:
    """``rows``, with a file that turns out unreadable midway (not UTF-8, a corrupt .gz) a ``DataError``."""
    try:
        yield from rows
    except UNREADABLE as err:
        raise unreadable(path, err) from None


def _header(path: Path, header: list[str]) -> tuple[list[str], dict[str, str]]:
    names, types = [], {}
    for column in header:
        name, _, kind = column.strip().rpartition(":")
        if not name or kind not in ATOMIC_TYPES:
            raise DataError(f"{path}: header field {column!r} is not name:type with type one of "
                            f"{', '.join(ATOMIC_TYPES)} (a RecBole atomic file types every column)")
        names.append(name)
        types[name] = kind
    return names, types


def _jsonl_table(path: Path) -> Table:
    """JSON lines have no header: the first record's keys stand for it."""
    skips = LineSkips(path)
    records = json_records(path, skips)
    first = next(records, None)
    if first is None:
        raise DataError(f"{path}: empty file (no JSON record)")

    def rows():
        yield first
        yield from records
    return Table(path, list(first[1]), {}, rows(), skips)


# --------------------------------------------------------------------------------------------------------------------
# Columns and values
# --------------------------------------------------------------------------------------------------------------------


def parse_columns(spec: str | None, flag: str) -> dict[str, str]:
    """``user=userId,item=movieId`` -> {"user": "userId", "item": "movieId"}."""
    out = {}
    for part in filter(None, (spec or "").split(",")):
        role, sep, column = part.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise DataError(f"{flag} {spec!r}: expected ROLE=COLUMN pairs separated by commas")
        out[role.strip()] = column.strip()
    return out


def map_columns(table: Table, defaults: dict[str, str], given: dict[str, str], required: tuple[str, ...],
                flag: str) -> dict[str, str]:
    """role -> column: the given ones (each must exist), else the default name when the table has it."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise DataError(f"{flag}: unknown role(s) {', '.join(unknown)}; the roles are {', '.join(defaults)}")
    for role, column in given.items():
        if column not in table.columns:
            raise DataError(f"{table.path}: no column {column!r} (given as {flag} {role}={column}); "
                            f"the columns are {', '.join(table.columns)}")
    mapping = {role: given.get(role, default) for role, default in defaults.items()
               if given.get(role, default) in table.columns}
    for role in required:
        if role not in mapping:
            raise DataError(f"{table.path}: no {defaults[role]!r} column (the columns are "
                            f"{', '.join(table.columns)}); name it with {flag} {role}=COLUMN")
    return mapping


def _token(value) -> str:
    text = value.strip() if isinstance(value, str) else "" if value is None else str(value)
    if not text:
        raise ValueError("empty id")
    return text


def _number(value) -> float | None:
    """A float, None when empty; a ValueError for text that is not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _time(value, unit: str) -> float | None:
    """A number as given, or an ISO 8601 date / datetime (UTC when it has no zone) as epoch seconds, or
    milliseconds when the file's unit is declared ms."""
    try:
        return _number(value)
    except (TypeError, ValueError):
        pass
    moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    seconds = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    return seconds * MS_FROM["s"] if unit == "ms" else seconds


def categories_of(value, atomic_type: str | None) -> list[str] | None:
    """A list as given; text split on ';' or '|' when it has one (AgentCF, MovieLens), else on whitespace for an
    atomic token_seq (RecBole's separator), else one category."""
    if isinstance(value, list):
        parts = [str(v) for v in value]
    elif not isinstance(value, str) or not value.strip():
        return None
    else:
        sep = next((s for s in (";", "|") if s in value), None)
        parts = value.split(sep) if sep else value.split() if atomic_type == "token_seq" else [value]
    return [p for p in (clean_text(p, 200) for p in parts) if p] or None


def _lenient_number(value) -> float | None:
    """Item attributes: a number, or None for anything else (a '$' and thousands commas are accepted)."""
    try:
        return _number(value.replace("$", "").replace(",", "") if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------------------
# Interactions and items
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Interaction:
    user: str
    item: str
    time: float | None
    rating: float | None


def read_interactions(cfg: ImportConfig, report: dict) -> list[Interaction]:
    events = [e for path in cfg.inter for e in _interactions_of(path, cfg.columns, cfg.time_unit, report)]
    if not events:
        raise DataError(f"{', '.join(map(str, cfg.inter))}: no interaction ({json.dumps(report['counts'])})")
    return events


def _interactions_of(path: Path, given: dict, time_unit: str, report: dict) -> list[Interaction]:
    table = open_table(path)
    columns = map_columns(table, INTERACTION_COLUMNS, given, ("user", "item"), "--columns")
    report["columns"][str(path)] = columns
    report["ignored_columns"][str(path)] = [c for c in table.columns if c not in columns.values()]
    if "history" in columns and "time" in columns:
        raise DataError(f"{path}: a history column ({columns['history']}) and a time column ({columns['time']}) "
                        "together: the history's items have no times; map only one")
    out, without_time = [], 0
    for line_no, row in tqdm(table.rows, desc=f"interactions {path.name}", unit=" rows", mininterval=1):
        try:
            user = _token(row[columns["user"]])
            history = [Interaction(user, item, None, None) for item in _history(row.get(columns.get("history")))]
            event = Interaction(user, _token(row[columns["item"]]),
                                _time(row[columns["time"]], time_unit) if "time" in columns else None,
                                _number(row[columns["rating"]]) if "rating" in columns else None)
        except (KeyError, TypeError, ValueError) as err:
            table.skips.skip(line_no, f"{type(err).__name__}: {err}")
            continue
        table.skips.good()
        if "time" in columns and event.time is None:
            without_time += 1
            continue
        out += [*history, event]
    table.skips.close()
    counts = report["counts"]
    for key, n in (("rows", table.skips.total), ("malformed_lines", table.skips.bad),
                   ("interactions_without_time", without_time)):
        counts[key] = counts.get(key, 0) + n
    return out


def _history(value) -> list[str]:
    """A history column (LLMRank's / AgentCF's ``item_id_list:token_seq``): the items before the row's item, oldest
    first. Rows that repeat a prefix of the same user's sequence (one row per target) add nothing: ``dedupe``
    keeps each (user, item) at its first place."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else value.split()


def read_items(cfg: ImportConfig, report: dict) -> dict[str, dict]:
    """item token -> item fields (no id yet), in the table's order; a repeated token keeps its first row."""
    if cfg.item is None:
        return {}
    table = open_table(cfg.item)
    columns = map_columns(table, ITEM_COLUMNS, cfg.item_columns, ("id",), "--item-columns")
    report["columns"][str(cfg.item)] = columns
    report["ignored_columns"][str(cfg.item)] = [c for c in table.columns if c not in columns.values()]
    items, repeated = {}, 0
    for line_no, row in tqdm(table.rows, desc=f"items {cfg.item.name}", unit=" rows", mininterval=1):
        try:
            token = _token(row.get(columns["id"]))
        except ValueError as err:
            table.skips.skip(line_no, str(err))
            continue
        table.skips.good()
        if token in items:
            repeated += 1
            continue
        items[token] = _item_fields(row, columns, table.types)
    table.skips.close()
    report["counts"].update(item_rows=table.skips.total, item_malformed_lines=table.skips.bad,
                            repeated_item_rows=repeated)
    return items


def _item_fields(row: dict, columns: dict, types: dict) -> dict:
    def get(role: str):
        return row.get(columns[role]) if role in columns else None

    count = _lenient_number(get("rating_count"))
    return {"title": get("title"), "categories": categories_of(get("categories"), types.get(columns.get("categories"))),
            "brand": clean_text(get("brand"), 100), "price": _lenient_number(get("price")),
            "average_rating": _lenient_number(get("average_rating")),
            "rating_count": int(count) if count is not None else None,
            "description": clean_text(get("description"), 600),
            "source_id": clean_text(get("source_id"), 100)}


def dedupe(events: list[Interaction], counts: dict) -> list[Interaction]:
    """One interaction per (user, item): the earliest; tied or missing times keep the first in the file."""
    first: dict[tuple[str, str], int] = {}
    kept: list[Interaction] = []
    for event in events:
        key = (event.user, event.item)
        if key not in first:
            first[key] = len(kept)
            kept.append(event)
        elif event.time is not None and event.time < kept[first[key]].time:
            kept[first[key]] = event
    counts["duplicate_user_item"] = len(events) - len(kept)
    return kept


def k_core(events: list[Interaction], min_user: int, k: int) -> tuple[list[Interaction], list[dict]]:
    """Drop users with fewer than max(min_user, k) interactions and items with fewer than k, round after round
    until every user and item left has enough: each round removes all that are below at that round's counts."""
    rounds = []
    while True:
        per_user, per_item = Counter(e.user for e in events), Counter(e.item for e in events)
        users = {u for u, n in per_user.items() if n < max(min_user, k)}
        items = {i for i, n in per_item.items() if n < k}
        if not users and not items:
            return events, rounds
        kept = [e for e in events if e.user not in users and e.item not in items]
        rounds.append({"users_removed": len(users), "items_removed": len(items),
                       "interactions_removed": len(events) - len(kept)})
        events = kept


def by_user(events: list[Interaction], counts: dict) -> dict[str, list[Interaction]]:
    """Each user's interactions, users in order of first appearance, sorted by time (a stable sort: tied times
    keep the file order). Counts the interactions that came after a later one of the same user, and the ties."""
    users: dict[str, list[Interaction]] = {}
    for event in events:
        users.setdefault(event.user, []).append(event)
    out_of_order = ties = 0
    for user, seq in users.items():
        if seq[0].time is None:
            continue
        latest = -math.inf
        for event in seq:
            out_of_order += event.time < latest
            latest = max(latest, event.time)
        seq.sort(key=lambda e: e.time)
        ties += sum(a.time == b.time for a, b in zip(seq, seq[1:]))
    counts.update(out_of_order_timestamps=out_of_order, tied_timestamps=ties)
    return users


def to_ms(times: list[float], unit: str) -> tuple[float, str]:
    """The factor to milliseconds (what the tools' one-day session gap assumes) and the unit it stands for."""
    if unit == "auto":
        unit = "s" if max(abs(t) for t in times) < SECONDS_BELOW else "ms"
    if unit not in MS_FROM:
        raise DataError(f"--time-unit {unit!r}: expected auto, s or ms")
    return MS_FROM[unit], unit


def number_items(records: dict[str, dict], users: dict[str, list[Interaction]], k: int,
                 counts: dict) -> dict[str, int]:
    """item token -> id: the items table's order, then items met only in interactions; with a K-core, only the
    items that survived it (a table row below K interactions is not in the core either)."""
    used = dict.fromkeys(e.item for seq in users.values() for e in seq)
    tokens = [t for t in records if k == 0 or t in used] + [t for t in used if t not in records]
    counts["items_without_record"] = sum(t not in records for t in used)
    return {token: i for i, token in enumerate(tokens)}


def import_dataset(cfg: ImportConfig) -> Dataset:
    report: dict = {"config": json.loads(json.dumps(asdict(cfg), default=str)), "counts": {}, "columns": {},
                    "ignored_columns": {}}
    counts = report["counts"]
    events = dedupe(read_interactions(cfg, report), counts)
    records = read_items(cfg, report)
    events, report["filter_rounds"] = k_core(events, cfg.min_user_interactions, cfg.k_core)
    if not events:
        raise DataError(f"{cfg.name}: no interaction survives the filter ({report['filter_rounds']})")
    users = by_user(events, counts)
    ids = number_items(records, users, cfg.k_core, counts)
    items = [item_record(i, **records.get(token, {"title": None})) for token, i in ids.items()]
    counts["items_without_title"] = sum(not r.get("title") for r in items)
    if counts["items_without_title"] == len(items):
        where = f"{cfg.item} has none (name its title column with --item-columns title=COLUMN)" if cfg.item else \
            "give an items table with --item"
        raise DataError(f"{cfg.name}: no item has a title, so no instance can be built: {where}")
    timed = events[0].time is not None  # a time column was mapped (rows without a time were dropped)
    split = _split(cfg, timed)
    factor, report["time_unit"] = to_ms([e.time for e in events], cfg.time_unit) if timed else (None, None)
    sequences = [_sequence(user, seq, ids, factor) for user, seq in users.items()]
    rated = any(s.ratings is not None for s in sequences)
    meta = {"name": cfg.name, "split": split, "source": _source(cfg), "licence": cfg.licence,
            "fields": [f for f in ITEM_FIELDS if any(f in r for r in items)]
            + ["timestamps"] * timed + ["ratings"] * rated, "import": report}
    if split == "global_time":
        meta.update(global_time_cuts(t for s in sequences for t in s.timestamps))
    log.info("%s: %s; filter rounds %s", cfg.name, json.dumps(counts), report["filter_rounds"])
    return Dataset(cfg.name, meta, items, sequences)


def _sequence(user: str, seq: list[Interaction], ids: dict[str, int], ms_factor: float | None) -> Sequence:
    """Times in whole milliseconds (the nearest: 1078625331.86 s * 1000 is not exact in floating point); ratings
    when every interaction of the user has one."""
    return Sequence(user, [ids[e.item] for e in seq],
                    [round(e.time * ms_factor) for e in seq] if ms_factor is not None else None,
                    [e.rating for e in seq] if all(e.rating is not None for e in seq) else None)


def _split(cfg: ImportConfig, timed: bool) -> str:
    if cfg.split == "auto":
        return "global_time" if timed else "leave_one_out"
    if cfg.split == "global_time" and not timed:
        raise DataError(f"{cfg.name}: --split global_time needs a time column (name it with --columns time=COLUMN)")
    if cfg.split not in ("global_time", "leave_one_out"):
        raise DataError(f"--split {cfg.split!r}: expected auto, global_time or leave_one_out")
    return cfg.split


def _source(cfg: ImportConfig) -> str:
    files = [*cfg.inter, *([cfg.item] if cfg.item else [])]
    return "imported: " + ", ".join(f"{p.name} (sha256 {_sha256(p)[:16]})" for p in files)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Export: a dataset -> RecBole atomic files
# --------------------------------------------------------------------------------------------------------------------


def export_atomic(data: Dataset, out: Path, users: int | None = None) -> list[Path]:
    """``<name>.inter`` (user_id, item_id, rating, timestamp in seconds) and ``<name>.item`` (item_id, title and
    the item fields the dataset has), which ``import_dataset`` reads back to the same dataset. Categories are
    joined by '; ' (a lone category with a space ends in ';', so that it is not read back as words). With
    ``users``: the first that many users and only the items they interacted with (item ids stay the dataset's)."""
    if not data.sequences:
        raise DataError(f"{data.name}: a {data.protocol} dataset has no interaction sequences to export")
    out.mkdir(parents=True, exist_ok=True)
    sequences = data.sequences[:users]
    used = {i for s in sequences for i in s.items}
    items = data.items if users is None else [r for r in data.items if r["id"] in used]
    rated = any(s.ratings is not None for s in sequences)
    timed = any(s.timestamps is not None for s in sequences)
    inter = out / f"{data.name}.inter"
    with open(inter, "w", encoding="utf-8") as f:
        f.write("\t".join(["user_id:token", "item_id:token"] + ["rating:float"] * rated
                          + ["timestamp:float"] * timed) + "\n")
        for s in sequences:
            for k, item in enumerate(s.items):
                row = [s.user, str(item)] + [_num(s.ratings[k] if s.ratings else None)] * rated \
                    + [_seconds(s.timestamps[k] if s.timestamps else None)] * timed
                f.write("\t".join(row) + "\n")
    fields = [f for f in ("title", "categories", "brand", "price", "average_rating", "rating_count", "description",
                          "source_id") if f == "title" or any(f in r for r in items)]
    kinds = {"title": "token_seq", "categories": "token_seq", "description": "token_seq", "price": "float",
             "average_rating": "float", "rating_count": "float"}
    item = out / f"{data.name}.item"
    with open(item, "w", encoding="utf-8") as f:
        f.write("\t".join(["item_id:token"] + [f"{k}:{kinds.get(k, 'token')}" for k in fields]) + "\n")
        for record in items:
            f.write("\t".join([str(record["id"])] + [_cell(k, record.get(k)) for k in fields]) + "\n")
    return [inter, item]


def _cell(field_name: str, value) -> str:
    if value is None:
        return ""
    if field_name == "categories":
        return "; ".join(value) + (";" if len(value) == 1 and " " in value[0] else "")
    return _num(value) if isinstance(value, (int, float)) else " ".join(str(value).split())


def _num(value) -> str:
    return "" if value is None else repr(float(value)) if not float(value).is_integer() else str(int(value))


def _seconds(ms: int | None) -> str:
    return "" if ms is None else f"{ms / 1000:.3f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def add_commands(sub) -> None:
    p = sub.add_parser("import", help="RecBole atomic files or a CSV / TSV / JSON-lines table -> a dataset")
    p.add_argument("name", help="the dataset's name: it is written to OUT/NAME")
    p.add_argument("--inter", type=Path, nargs="+", required=True,
                   help="interactions: .inter, .csv, .tsv or .jsonl (.gz); several files are read in order as one")
    p.add_argument("--item", type=Path, help="items: .item, .csv, .tsv or .jsonl (.gz); titles come from here")
    p.add_argument("--columns", help="interaction columns by role, e.g. user=userId,item=movieId,time=ts,rating=r "
                   f"(default: {','.join(f'{k}={v}' for k, v in INTERACTION_COLUMNS.items())})")
    p.add_argument("--item-columns", help="item columns by role, e.g. id=movieId,title=name,categories=genres "
                   f"(roles: {', '.join(ITEM_COLUMNS)}; default: RecBole's names)")
    p.add_argument("--split", default="auto", choices=("auto", "global_time", "leave_one_out"),
                   help="auto: global_time (8:1:1 by global time) when every interaction has a time")
    p.add_argument("--min-user-interactions", type=int, default=1, help="drop users with fewer interactions")
    p.add_argument("--k-core", type=int, default=0, help="keep the K-core: every user and item with >= K")
    p.add_argument("--time-unit", default="auto", choices=("auto", "s", "ms"),
                   help="unit of numeric times (auto: seconds below 1e11, else milliseconds)")
    p.add_argument("--licence", default=ImportConfig.licence, help="recorded in meta.json")
    p.add_argument("--out", type=Path, default=DATA_ROOT, help="where the dataset folder is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.set_defaults(run=_run_import)
    p = sub.add_parser("export", help="a dataset -> RecBole atomic files NAME.inter and NAME.item")
    p.add_argument("name", help="dataset name under data/ (or a folder)")
    p.add_argument("--out", type=Path, required=True, help="folder for the two files")
    p.add_argument("--users", type=int, help="only the first N users and the items they interacted with")
    p.set_defaults(run=_run_export)


def _run_import(args) -> None:
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise DataError(f"dataset name {args.name!r}: a plain folder name, please")
    if (args.out / args.name / "meta.json").is_file() and not args.overwrite:
        raise DataError(f"{args.out / args.name} already holds a dataset; pass --overwrite to replace it")
    cfg = ImportConfig(args.name, args.inter, args.item, parse_columns(args.columns, "--columns"),
                       parse_columns(args.item_columns, "--item-columns"), args.split, args.min_user_interactions,
                       args.k_core, args.time_unit, args.licence)
    data = import_dataset(cfg)
    stats = save(data, args.out)
    print(json.dumps({"dataset": str(args.out / args.name), **data.meta["import"]["counts"],
                      "filter_rounds": data.meta["import"]["filter_rounds"], "stats": stats}, indent=2))


def _run_export(args) -> None:
    print("\n".join(map(str, export_atomic(load_dataset(args.name), args.out, args.users))))
