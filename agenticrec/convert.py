"""Converters from the source datasets (../shared/data, Amazon Reviews 2023 raw files) to our format.

    python -m agenticrec.data convert --source ../shared/data [--out data]       all shipped datasets
    python -m agenticrec.data prepare-amazon2023 --reviews Video_Games.jsonl.gz --meta meta_Video_Games.jsonl.gz \
        --out data/games2023 [--start 2022-10-01 --end 2023-10-01]

Every converter cleans titles the same way (``clean_title``), writes items / sequences or windows / meta.json,
then the fixed instances (``agenticrec.data.write_instances``). docs/data.md lists what each source is and under
which licence it is shipped.
"""

from __future__ import annotations

import ast
import csv
import html
import json
import logging
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from agenticrec.data import (DATA_ROOT, DataError, Dataset, Sequence, Window, global_time_cuts, read_jsonl, stats,
                             write_instances, write_jsonl)

log = logging.getLogger("agenticrec.convert")
PLACEHOLDER_TITLE = re.compile(r"title_\d+")
csv.field_size_limit(2**31 - 1)


def clean_title(title) -> str | None:
    """Unescape HTML entities (twice: some sources are double-escaped), collapse whitespace; None for empty or
    placeholder titles (``title_<id>``), which must never reach a prompt."""
    if not isinstance(title, str):
        return None
    text = " ".join(html.unescape(html.unescape(title)).split())
    return None if not text or PLACEHOLDER_TITLE.fullmatch(text) else text


def clean_text(text, limit: int = 1000) -> str | None:
    if isinstance(text, list):
        text = " ".join(t for t in text if isinstance(t, str))
    if not isinstance(text, str):
        return None
    text = " ".join(html.unescape(text).split())
    return text[:limit].rstrip() or None  # a cut may end on a space


def item_record(item_id: int, title, **fields) -> dict:
    """An items.jsonl record with only the fields that have a value."""
    record = {"id": item_id, "title": clean_title(title)}
    record.update({k: v for k, v in fields.items() if v not in (None, "", [], {})})
    return record


def save(data: Dataset, out_root: Path, seed: int = 0) -> dict:
    folder = data.folder = out_root / data.name
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "items.jsonl.gz", data.items)
    if data.windows:
        write_jsonl(folder / "windows.jsonl.gz", ({"user": w.user, "history": w.history, "target": w.target,
                                                    "split": w.split} for w in data.windows))
    else:
        write_jsonl(folder / "sequences.jsonl.gz", (_sequence_json(s) for s in data.sequences))
    (folder / "meta.json").write_text(json.dumps(data.meta, indent=2) + "\n")
    splits = ("test",) if data.meta.get("evaluation_only") else ("train", "valid", "test")
    data.meta["instances"] = write_instances(data, out_root, seed=seed, splits=splits)
    data.meta["stats"] = stats(data, out_root)
    (folder / "meta.json").write_text(json.dumps(data.meta, indent=2) + "\n")
    log.info("%s: %s", data.name, json.dumps(data.meta["stats"]))
    return data.meta["stats"]


def _sequence_json(s: Sequence) -> dict:
    record = {"user": s.user, "items": s.items}
    if s.timestamps is not None:
        record["timestamps"] = s.timestamps
    if s.ratings is not None:
        record["ratings"] = s.ratings
    return record


# --------------------------------------------------------------------------------------------------------------------
# ../shared/data sources
# --------------------------------------------------------------------------------------------------------------------


def convert_games(src: Path) -> Dataset:
    """LLMRank's Amazon 2018 Video_Games 5-core: titles only, full sequences (test history + test target)."""
    folder = src / "amazon_video_games"
    items = [item_record(int(row["item_id:token"]), row["title:token_seq"]) for row in _tsv(folder / "Games.item")]
    sequences = [Sequence(row["user_id:token"], [int(i) for i in row["item_id_list:token_seq"].split()]
                          + [int(row["item_id:token"])]) for row in _tsv(folder / "Games-6k.test.inter")]
    meta = {"name": "games", "split": "leave_one_out", "domain": "Amazon 2018 Video_Games 5-core",
            "source": "RUCAIBox/LLMRank@5ec1154c llmrank/dataset/{Games/Games.item,Games-6k/Games-6k.test.inter}",
            "licence": "LLMRank: MIT; data: Amazon Review Data 2018 (McAuley lab), research use only",
            "fields": ["title"]}
    return Dataset("games", meta, items, sequences)


def convert_beauty(src: Path) -> Dataset:
    """The P5 / S3Rec Amazon 2014 Beauty 5-core (TransRec ids and titles, IDGenRec's raw ASINs line by line)."""
    folder = src / "amazon_beauty"
    raw_items = list(read_jsonl(folder / "transrec" / "items.jsonl"))
    seq_lines = (folder / "transrec" / "sequential_data.txt").read_text().split("\n")
    asin_lines = (folder / "idgenrec" / "user_sequence.txt").read_text().split("\n")
    sequences, asins = [], {}
    for ids_line, asin_line in zip(filter(None, seq_lines), filter(None, asin_lines)):
        user, *ids = ids_line.split()
        reviewer, *item_asins = asin_line.split()
        sequences.append(Sequence(reviewer, [int(i) for i in ids]))
        asins.update(zip(map(int, ids), item_asins))
    items = [item_record(r["item_id"], r["title"], categories=(r.get("categories") or [[]])[0],
                         source_id=asins.get(r["item_id"])) for r in raw_items]
    meta = {"name": "beauty", "split": "leave_one_out", "domain": "Amazon 2014 Beauty 5-core (P5 / S3Rec)",
            "source": "Linxyhaha/TransRec@da14d539 data/beauty/rec_data + agiresearch/IDGenRec@a297185a "
                      "rec_datasets/Beauty/user_sequence.txt",
            "licence": "no licence stated by either repository; data: Amazon Review Data 2014 (McAuley lab), "
                       "research use only", "fields": ["title", "categories"]}
    return Dataset("beauty", meta, items, sequences)


def convert_office(src: Path) -> Dataset:
    """MiniOneRec's Amazon 2018 Office_Products: valid and test windows only (no train split was published), so
    it is evaluation-only: the tools' collaborative models learn from the valid rows, which precede the test
    period, and only the test split is evaluated."""
    folder = src / "amazon_office_products_minionerec"
    index = json.loads((folder / "index" / "Office_Products.item.json").read_text())
    items = [item_record(int(k), v.get("title"), brand=clean_text(v.get("brand"), 100),
                         description=clean_text(_literal_list(v.get("description")), 600))
             for k, v in sorted(index.items(), key=lambda kv: int(kv[0]))]
    windows = []
    for split in ("valid", "test"):
        for row in _csv(folder / split / "Office_Products_5_2016-10-2018-11.csv"):
            windows.append(Window(row["user_id"], [int(i) for i in ast.literal_eval(row["history_item_id"])],
                                  int(row["item_id"]), split))
    meta = {"name": "office", "split": "windows", "evaluation_only": True,
            "domain": "Amazon 2018 Office_Products 5-core, 2016-10 to 2018-11 (MiniOneRec / D3)",
            "source": "AkaliKong/MiniOneRec@81b4ba98 data/Amazon/{index,valid,test}",
            "licence": "MiniOneRec: Apache-2.0; data: Amazon Review Data 2018 (McAuley lab), research use only",
            "fields": ["title", "brand", "description"]}
    return Dataset("office", meta, items, windows=windows)


def convert_beauty2023(src: Path) -> Dataset:
    """The official Amazon Reviews 2023 All_Beauty 5-core benchmark (last_out_w_his: leave-last-out by time), with
    timestamps and ratings, and swarpi's metadata for the same 356 items (title, price, details -> brand)."""
    folder = src / "amazon2023_All_Beauty"
    meta_rows = list(_csv(folder / "swarpi_derived" / "filterd_meta_items.csv"))
    ids = {row["parent_asin"]: i for i, row in enumerate(meta_rows)}
    items = [item_record(i, row["title"], price=_price(row["price"]), brand=_brand(row["details"]),
                         description=clean_text(_literal_list(row["description"]), 600), source_id=row["parent_asin"])
             for i, row in enumerate(meta_rows)]
    events = {(r["user_id"], r["parent_asin"]): (int(r["timestamp"]), float(r["rating"]))
              for r in _csv_gz(folder / "benchmark_5core_rating_only" / "All_Beauty.csv.gz")}
    sequences = []
    for row in _csv(folder / "benchmark_5core_last_out_w_his" / "All_Beauty.test.csv"):
        asins = row["history"].split() + [row["parent_asin"]]
        user = row["user_id"]
        sequences.append(Sequence(user, [ids[a] for a in asins], [events[user, a][0] for a in asins],
                                  [events[user, a][1] for a in asins]))
    meta = {"name": "beauty2023", "split": "leave_one_out",
            "domain": "Amazon Reviews 2023 All_Beauty 5-core, official last_out_w_his split",
            "source": "swarpi/LLM_Recommender@305b51e2 new_data/All_Beauty.{test}.csv, data/All_Beauty(1).csv.gz, "
                      "data/filterd_meta_items.csv (benchmark files sha256-identical to McAuley-Lab's release)",
            "licence": "Amazon Reviews 2023 (McAuley lab), research use only; swarpi/LLM_Recommender states no licence",
            "fields": ["title", "price", "brand", "description", "timestamps", "ratings"]}
    return Dataset("beauty2023", meta, items, sequences)


def _tsv(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


def _csv(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def _csv_gz(path: Path):
    import gzip
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def _literal_list(text):
    try:
        value = ast.literal_eval(text) if isinstance(text, str) and text.startswith("[") else text
    except (ValueError, SyntaxError):
        return text
    return value


def _price(text) -> float | None:
    try:
        value = float(str(text).replace("$", "").replace(",", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def _brand(details: str) -> str | None:
    try:
        value = ast.literal_eval(details) if details else {}
    except (ValueError, SyntaxError):
        return None
    return clean_text(value.get("Brand"), 100) if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------------------------------
# Amazon Reviews 2023 raw files, with the paper's protocol
# --------------------------------------------------------------------------------------------------------------------


def _day_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)


def prepare_amazon2023(reviews: Path, meta_file: Path, name: str, start: str = "2022-10-01",
                       end: str = "2023-10-01", fractions=(0.8, 0.1, 0.1), min_user_interactions: int = 1) -> Dataset:
    """Raw ``<Category>.jsonl(.gz)`` + ``meta_<Category>.jsonl(.gz)`` -> a ``global_time`` dataset.

    1. Stream the reviews; keep those with start <= timestamp < end (UTC days; timestamps are in ms).
    2. Stream the metadata; keep the items reviewed in the window that have a non-empty title.
    3. Drop reviews of items without a title; de-duplicate (user, item), keeping the earliest review (exact
       duplicate lines are common in the raw files, and a repeat purchase would put the target in its own history).
    4. Drop users with fewer than ``min_user_interactions`` interactions; sort each user's interactions by time.
    5. Split all interactions chronologically 8:1:1 by global timestamp cut points (``valid_from``, ``test_from``);
       the collaborative tools fit on the first 7/8 of the train period (``fit_until``), and train instances are
       the interactions of its last 1/8, so no instance's target is in the tools' training data.
    Both files are read line by line: memory grows with the kept interactions, not the file size.
    """
    lo, hi = _day_ms(start), _day_ms(end)
    kept: dict[tuple[str, str], tuple[int, float | None]] = {}
    skipped = defaultdict(int)
    for r in tqdm(read_jsonl(reviews), desc=f"reviews {reviews.name}", unit=" lines", mininterval=1):
        user, asin, ts = r.get("user_id"), r.get("parent_asin"), r.get("timestamp")
        if not (isinstance(user, str) and isinstance(asin, str) and isinstance(ts, int)):
            skipped["review_missing_fields"] += 1
            continue
        if not lo <= ts < hi:
            skipped["review_outside_window"] += 1
            continue
        rating = r.get("rating") if isinstance(r.get("rating"), (int, float)) else None
        if (user, asin) in kept:
            skipped["duplicate_user_item"] += 1
            if ts >= kept[user, asin][0]:
                continue
        kept[user, asin] = (ts, rating)
    needed = {asin for _, asin in kept}
    metadata = {}
    for m in tqdm(read_jsonl(meta_file), desc=f"meta {meta_file.name}", unit=" lines", mininterval=1):
        asin = m.get("parent_asin")
        if asin in needed and clean_title(m.get("title")):
            metadata[asin] = m
    return _assemble_2023(name, kept, metadata, skipped, start, end, fractions, min_user_interactions,
                          source=f"{reviews.name} + {meta_file.name}")


def _assemble_2023(name, kept, metadata, skipped, start, end, fractions, min_user_interactions, source) -> Dataset:
    by_user: dict[str, list[tuple[int, str, float | None]]] = defaultdict(list)
    for (user, asin), (ts, rating) in kept.items():
        if asin in metadata:
            by_user[user].append((ts, asin, rating))
        else:
            skipped["review_of_untitled_item"] += 1
    users = sorted(u for u, events in by_user.items() if len(events) >= min_user_interactions)
    skipped["users_below_min_interactions"] = len(by_user) - len(users)
    asins = sorted({asin for u in users for _, asin, _ in by_user[u]})
    ids = {asin: i for i, asin in enumerate(asins)}
    items = [_item_2023(ids[a], metadata[a]) for a in asins]
    sequences = []
    for user in users:
        events = sorted(by_user[user])
        sequences.append(Sequence(user, [ids[a] for _, a, _ in events], [t for t, _, _ in events],
                                  [r for _, _, r in events] if all(r is not None for _, _, r in events) else None))
    times = [t for s in sequences for t in s.timestamps]
    if not times:
        raise DataError(f"{source}: no interaction survives the protocol ({dict(skipped)})")
    meta = {"name": name, "split": "global_time", **global_time_cuts(times, fractions), "window": [start, end],
            "source": source, "skipped": dict(skipped),
            "licence": "Amazon Reviews 2023 (McAuley lab), research use only",
            "fields": ["title", "categories", "brand", "price", "average_rating", "rating_count", "description",
                       "timestamps", "ratings"]}
    return Dataset(name, meta, items, sequences)


def _item_2023(item_id: int, m: dict) -> dict:
    categories = [c for c in (m.get("categories") or []) if isinstance(c, str)]
    details = m.get("details") if isinstance(m.get("details"), dict) else {}
    return item_record(item_id, m.get("title"), categories=categories or
                       ([m["main_category"]] if isinstance(m.get("main_category"), str) else None),
                       brand=clean_text(m.get("store") or details.get("Brand"), 100),
                       price=m.get("price") if isinstance(m.get("price"), (int, float)) else None,
                       average_rating=m.get("average_rating") if isinstance(m.get("average_rating"), (int, float))
                       else None,
                       rating_count=m.get("rating_number") if isinstance(m.get("rating_number"), int) else None,
                       description=clean_text(m.get("description"), 600), source_id=m.get("parent_asin"))


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def add_commands(sub) -> None:
    p = sub.add_parser("convert", help="convert every shipped dataset from ../shared/data")
    p.add_argument("--source", type=Path, default=DATA_ROOT.parents[1] / "shared" / "data",
                   help="the folder holding the source datasets")
    p.add_argument("--out", type=Path, default=DATA_ROOT, help="where dataset folders are written")
    p.add_argument("--only", nargs="+", help="convert only these datasets")
    p.set_defaults(run=_run_convert)
    p = sub.add_parser("prepare-amazon2023", help="raw Amazon Reviews 2023 files -> a dataset (paper protocol)")
    p.add_argument("--reviews", type=Path, required=True, help="<Category>.jsonl or .jsonl.gz")
    p.add_argument("--meta", type=Path, required=True, help="meta_<Category>.jsonl or .jsonl.gz")
    p.add_argument("--out", type=Path, required=True, help="output dataset folder; its name is the dataset name")
    p.add_argument("--start", default="2022-10-01", help="first day kept (UTC)")
    p.add_argument("--end", default="2023-10-01", help="first day no longer kept (UTC)")
    p.add_argument("--min-user-interactions", type=int, default=1, help="drop users with fewer interactions")
    p.set_defaults(run=_run_prepare)


CONVERTERS = {"games": convert_games, "beauty": convert_beauty, "office": convert_office,
              "beauty2023": convert_beauty2023}


def _run_convert(args) -> None:
    for name, converter in CONVERTERS.items():
        if args.only and name not in args.only:
            continue
        print(name, json.dumps(save(converter(args.source), args.out)))
    if not args.only or "games2023_sample" in args.only:
        folder = args.source / "amazon2023_Video_Games"
        data = prepare_amazon2023(folder / "Video_Games_subset.jsonl", folder / "meta_Video_Games_subset.jsonl",
                                  "games2023_sample", start="1990-01-01", end="2030-01-01")
        print("games2023_sample", json.dumps(save(data, args.out)))


def _run_prepare(args) -> None:
    data = prepare_amazon2023(args.reviews, args.meta, args.out.name, args.start, args.end,
                              min_user_interactions=args.min_user_interactions)
    print(json.dumps(save(data, args.out.parent)))
