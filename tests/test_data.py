"""Data: shipped datasets match their sources' counts, instances follow the protocol, the raw 2023 loader, and the
structural guarantee that collaborative models never train on valid / test targets."""

import gzip
import json
import logging
from pathlib import Path

import pytest

from agenticrec.convert import clean_title, prepare_amazon2023
from agenticrec.data import (DATA_ROOT, DataError, Dataset, Sequence, Window, build_instances, dataset_folder,
                             instances_path, interleave, interleaved_instances, load_dataset, load_instances,
                             parse_candidate_sizes, read_jsonl, split_instances, stats, training_sequences,
                             write_jsonl)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name, expected", [
    # users / items / interactions, as each source's SOURCE.md reports them
    ("games", {"users": 50_546, "items": 16_859, "interactions": 440_264}),
    ("beauty", {"users": 22_363, "items": 12_101, "interactions": 198_502}),
    ("beauty2023", {"users": 253, "items": 356, "interactions": 2_535}),
    ("office", {"users": 3_231, "items": 3_459, "items_interacted": 3_317, "valid_rows": 4_866,
                "valid_users": 1_795, "test_rows": 4_866, "test_users": 2_024}),
])
def test_shipped_datasets_match_their_sources(name, expected):
    got = stats(load_dataset(name))
    assert {k: got[k] for k in expected} == expected


def test_shipped_instances_follow_the_protocol():
    data = load_dataset("beauty2023")
    by_user = {s.user: s for s in data.sequences}
    for split in ("train", "valid", "test"):
        instances = load_instances("beauty2023", split)
        assert len(instances) == 253
        for x in instances:
            seq = by_user[x.user]
            assert x.target == seq.items[x.position] and x.history == seq.items[:x.position][-10:]
            assert x.candidates.count(x.target) == 1 and len(x.candidates) == 20 == len(set(x.candidates))
            assert not set(x.candidates) - {x.target} & set(seq.items)  # negatives: never interacted with
        assert {len(by_user[x.user].items) - x.position for x in instances} == {"train": {3}, "valid": {2},
                                                                               "test": {1}}[split]


def test_split_instances_read_the_shipped_file_and_build_other_sizes_by_the_protocol():
    data = load_dataset("beauty2023")
    assert split_instances(data, "valid") == load_instances("beauty2023", "valid")
    built = split_instances(data, "valid", 50)
    assert built == build_instances(data, "valid", 50)[0] and {len(x.candidates) for x in built} == {50}
    assert [x.target for x in built] == [x.target for x in load_instances("beauty2023", "valid")]


def test_interleaved_instances_alternate_sizes_and_cut_nothing():
    assert interleave([["a1", "a2", "a3"], ["b1"], ["c1", "c2"]]) == ["a1", "b1", "c1", "a2", "c2", "a3"]
    data = load_dataset("beauty2023")
    mixed = interleaved_instances(data, "train", (20, 50))
    assert [len(x.candidates) for x in mixed[:4]] == [20, 50, 20, 50] and len(mixed) == 2 * 253
    assert mixed[0::2] == load_instances("beauty2023", "train")
    assert interleaved_instances(data, "train", (20,)) == load_instances("beauty2023", "train")


@pytest.mark.parametrize("text, sizes", [("20", (20,)), ("20,50", (20, 50)), ("50,20", (50, 20))])
def test_candidate_sizes_parse_in_order(text, sizes):
    assert parse_candidate_sizes(text) == sizes


@pytest.mark.parametrize("text, message", [("20,x", "not a comma list"), ("20,20", "distinct"),
                                           ("1", "at least 2"), ("", "not a comma list")])
def test_bad_candidate_sizes_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_candidate_sizes(text)


def tiny_dataset(protocol="leave_one_out", **meta) -> Dataset:
    items = [{"id": i, "title": f"Item {i}"} for i in range(60)]
    # every interaction is a distinct item, so "item appears" == "that interaction appears"
    sequences = [Sequence(f"u{u}", list(range(6 * u, 6 * u + 6)), [1000 * (6 * u + k) for k in range(6)])
                 for u in range(5)]
    return Dataset("tiny", {"name": "tiny", "split": protocol, **meta}, items, sequences)


def test_same_seed_same_instances_and_candidates_are_valid():
    data = tiny_dataset()
    a, _ = build_instances(data, "test", num_candidates=8, seed=3)
    b, _ = build_instances(data, "test", num_candidates=8, seed=3)
    c, _ = build_instances(data, "test", num_candidates=8, seed=4)
    assert [x.candidates for x in a] == [x.candidates for x in b] != [x.candidates for x in c]
    for x in a:
        seq = next(s for s in data.sequences if s.user == x.user)
        assert x.candidates.count(x.target) == 1 and len(set(x.candidates)) == 8
        assert not (set(x.candidates) - {x.target}) & set(seq.items)


def test_placeholder_titles_never_become_targets_or_negatives():
    data = tiny_dataset()
    for i in (5, 11, 40, 41, 42):
        data.items[i]["title"] = None
    instances, skipped = build_instances(data, "test", num_candidates=10, seed=0)
    assert skipped["untitled_target"] == 2  # users 0 and 1 end on items 5 and 11
    assert all(data.has_title(c) for x in instances for c in x.candidates)
    assert data.title(40) == "Untitled item"


@pytest.mark.parametrize("protocol, meta", [
    ("leave_one_out", {}), ("global_time", {"fit_until": 15_000, "valid_from": 20_000, "test_from": 25_000})])
def test_collaborative_training_data_holds_no_instance_target(protocol, meta):
    data = tiny_dataset(protocol, **meta)
    trained_on = {i for seq in training_sequences(data) for i in seq}
    assert trained_on
    for split in ("train", "valid", "test"):
        instances, _ = build_instances(data, split, num_candidates=5)
        assert instances
        assert not {x.target for x in instances} & trained_on


def test_window_datasets_train_only_on_rows_before_the_test_period():
    items = [{"id": i, "title": f"Item {i}"} for i in range(40)]
    windows = [Window("a", [0, 1], 2, "valid"), Window("b", [3], 4, "valid"), Window("a", [0, 1, 2], 30, "test"),
               Window("c", [4], 31, "test")]
    data = Dataset("w", {"name": "w", "split": "windows"}, items, windows=windows)
    assert training_sequences(data) == [[0, 1, 2], [3, 4]]
    assert {x.target for x in build_instances(data, "test", 5)[0]} == {30, 31}


def test_clean_title():
    assert clean_title("  Halo&nbsp;3 &amp;amp; ODST\n(Xbox&reg;) ") == "Halo 3 & ODST (Xbox®)"
    assert clean_title("title_4344") is None and clean_title("   ") is None and clean_title(None) is None


def test_malformed_lines_are_counted_skips_until_they_dominate(tmp_path, caplog):
    good = [json.dumps({"id": i}) for i in range(200)]
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(good[:100] + ["{broken", "[1, 2]"] + good[100:]) + "\n")
    with caplog.at_level(logging.WARNING):
        assert [r["id"] for r in read_jsonl(path)] == list(range(200))
    assert "skipped 2 malformed line(s) of 202" in caplog.text
    path.write_text("\n".join(good[:10] + ["nope"] * 5) + "\n")
    with pytest.raises(DataError, match="5 of 15 lines are malformed"):
        list(read_jsonl(path))
    (tmp_path / "y.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="unreadable"):
        list(read_jsonl(tmp_path / "y.jsonl.gz"))


def test_written_files_depend_on_the_records_only(tmp_path):
    """Two writes of the same records are the same bytes, whatever temporary name each went through."""
    records = [{"id": i, "title": f"Item {i}"} for i in range(5)]
    write_jsonl(tmp_path / "a" / "items.jsonl.gz", records)
    write_jsonl(tmp_path / "b" / "items.jsonl.gz", records)
    assert (tmp_path / "a" / "items.jsonl.gz").read_bytes() == (tmp_path / "b" / "items.jsonl.gz").read_bytes()
    assert list(read_jsonl(tmp_path / "a" / "items.jsonl.gz")) == records


def test_a_dataset_is_found_by_name_first_then_as_a_folder(tmp_path, monkeypatch):
    for name in ("games", "mine"):  # a folder named like a shipped dataset does not hide it
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert dataset_folder("games") == DATA_ROOT / "games"
    assert dataset_folder("mine") == Path("mine") and dataset_folder(tmp_path / "mine") == tmp_path / "mine"
    assert instances_path("mine", "test") == Path("mine") / "instances" / "test.jsonl.gz"


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(DataError, match="dataset 'nope' not found.*games"):
        load_dataset("nope")


def _review(user, asin, day, rating=5.0):
    return {"rating": rating, "title": "t", "text": "x", "images": [], "asin": asin, "parent_asin": asin,
            "user_id": user, "timestamp": 1_665_000_000_000 + day * 86_400_000, "helpful_vote": 0,
            "verified_purchase": True}


def test_prepare_amazon2023_protocol_on_generated_records(tmp_path):
    # day 0 = 2022-10-05; the default window is [2022-10-01, 2023-10-01)
    reviews = [_review(f"u{u}", f"I{(u + k) % 12}", 10 * u + k) for u in range(10) for k in range(4)]
    reviews += [_review("u0", "I0", 0), _review("u0", "I0", 3)]  # exact and later duplicates of (u0, I0)
    reviews += [_review("u1", "I1", -30), _review("u2", "I2", 400)]  # outside the window
    reviews += [_review("u3", "NOMETA", 5)]  # item without metadata
    meta = [{"parent_asin": f"I{i}", "title": f"Game &amp; {i}", "main_category": "Video Games", "price": 9.5,
             "average_rating": 4.0, "rating_number": 10} for i in range(12)] + [{"parent_asin": "X", "title": ""}]
    with gzip.open(tmp_path / "Video_Games.jsonl.gz", "wt") as f:
        f.write("\n".join(map(json.dumps, reviews)) + "\n")
    (tmp_path / "meta_Video_Games.jsonl").write_text("\n".join(map(json.dumps, meta)) + "\n")
    data = prepare_amazon2023(tmp_path / "Video_Games.jsonl.gz", tmp_path / "meta_Video_Games.jsonl", "g")
    skipped = data.meta["skipped"]
    assert skipped["review_outside_window"] == 2 and skipped["duplicate_user_item"] == 2
    assert skipped["review_of_untitled_item"] == 1
    assert sum(len(s.items) for s in data.sequences) == 40 and len(data.items) == 12
    assert data.items[0]["title"] == "Game & 0" and data.items[0]["price"] == 9.5
    assert all(s.timestamps == sorted(s.timestamps) for s in data.sequences)
    times = sorted(t for s in data.sequences for t in s.timestamps)
    assert times.index(data.meta["valid_from"]) == 32 and times.index(data.meta["test_from"]) == 36  # 8:1:1
    assert times.index(data.meta["fit_until"]) == 28
    splits = [data.split_of(s, p) for s in data.sequences for p in range(len(s.items))]
    assert splits.count("train") == 32 and splits.count("valid") == 4 and splits.count("test") == 4


def test_prepare_amazon2023_on_real_records():
    folder = FIXTURES / "amazon2023"
    data = prepare_amazon2023(folder / "Video_Games.slice.jsonl", folder / "meta_Video_Games.slice.jsonl",
                              "real", start="1990-01-01", end="2030-01-01")
    assert len(data.items) == 18  # the reviewed items that have a titled metadata record
    assert data.meta["skipped"]["review_of_untitled_item"] == 30
    assert sum(len(s.items) for s in data.sequences) == 19
    assert all(item["title"] and item["source_id"] for item in data.items)
    assert all(s.ratings is not None and all(1 <= r <= 5 for r in s.ratings) for s in data.sequences)
    window = prepare_amazon2023(folder / "Video_Games.slice.jsonl", folder / "meta_Video_Games.slice.jsonl",
                                "window", start="2020-01-01", end="2023-10-01")
    assert all(t >= 1_577_836_800_000 for s in window.sequences for t in s.timestamps)
    assert sum(len(s.items) for s in window.sequences) < 19
