"""Bring your own data: RecBole atomic files and plain tables -> a dataset, checked against hand-computed datasets;
malformed and empty files; the K-core rounds; Games exported and imported back unchanged; and an imported folder
used by stats, evaluate.py, train_grpo.py and train_ppr.py as it is."""

import gzip
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agenticrec.data import DataError, build_instances, load_dataset, load_instances, stats
from agenticrec.importer import ImportConfig, export_atomic, import_dataset

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, rows: list[list], sep: str = "\t") -> Path:
    path.write_text("".join(sep.join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    return path


# Every atomic type, columns in no particular order, unknown columns (extra, note, vec, rank). In the file:
# (u1, a) twice (the later one goes), (u2, a) twice (the earlier one, met second, stays), u2's g after a later
# time, d and e tied at 50 s, an interaction without a time (dropped), u3 with one interaction (below
# --min-user-interactions 2), item e without a title, items f, g and h without an items row, item x never
# interacted with, item a's row repeated.
INTER = [["timestamp:float", "item_id:token", "extra:float_seq", "user_id:token", "rating:float", "note:token_seq"],
         [300, "b", "0.1 0.2", "u1", 4, "first"],
         [100, "a", "0.3", "u1", 5, "x y"],
         [200, "c", "", "u1", 3, ""],
         [150, "a", "1", "u1", 2, ""],
         [50, "d", "0", "u2", 4, ""],
         [50, "e", "0", "u2", 3, ""],
         [60, "a", "0", "u2", 1, ""],
         [70, "f", "0", "u2", 2, ""],
         [40, "g", "0", "u2", 5, ""],
         [20, "a", "0", "u2", 4, ""],
         [10, "a", "0", "u3", 3, ""],
         ["", "h", "0", "u1", 2, ""]]
ITEM = [["price:float", "item_id:token", "title:token_seq", "categories:token_seq", "brand:token", "vec:float_seq",
         "rank:float"],
        [9.99, "a", "Alpha &amp; Omega  Game", "Action Adventure", "Acme", "0.1 0.2", 3],
        ["", "b", "Beta Game", "Racing; Sim Racing", "Bolt", "", ""],
        [5, "c", "Gamma", "Puzzle", "", "1", ""],
        [2, "d", "Delta", "Party|Music", "Dz", "", ""],
        ["", "e", "", "Misc", "", "", ""],
        [1, "x", "Unused Item", "", "", "", ""],
        [7, "a", "Alpha again", "", "", "", ""]]
# ... by hand: ids in the items file's order (a b c d e x), then g and f in order of first appearance in the
# users' time-sorted sequences (u1: a c b; u2: a g d e f)
EXPECTED_ITEMS = [
    {"id": 0, "title": "Alpha & Omega Game", "categories": ["Action", "Adventure"], "brand": "Acme", "price": 9.99},
    {"id": 1, "title": "Beta Game", "categories": ["Racing", "Sim Racing"], "brand": "Bolt"},
    {"id": 2, "title": "Gamma", "categories": ["Puzzle"], "price": 5.0},
    {"id": 3, "title": "Delta", "categories": ["Party", "Music"], "brand": "Dz", "price": 2.0},
    {"id": 4, "title": None, "categories": ["Misc"]},
    {"id": 5, "title": "Unused Item", "price": 1.0},
    {"id": 6, "title": None},
    {"id": 7, "title": None}]
EXPECTED_SEQUENCES = [("u1", [0, 2, 1], [100_000, 200_000, 300_000], [5.0, 3.0, 4.0]),
                      ("u2", [0, 6, 3, 4, 7], [20_000, 40_000, 50_000, 50_000, 70_000], [4.0, 5.0, 4.0, 3.0, 2.0])]


def sequences(data):
    return [(s.user, s.items, s.timestamps, s.ratings) for s in data.sequences]


@pytest.fixture
def atomic(tmp_path):
    return write_rows(tmp_path / "shop.inter", INTER), write_rows(tmp_path / "shop.item", ITEM)


def test_atomic_files_give_the_hand_computed_dataset(atomic):
    inter, item = atomic
    data = import_dataset(ImportConfig("shop", inter, item, min_user_interactions=2))
    assert data.items == EXPECTED_ITEMS
    assert sequences(data) == EXPECTED_SEQUENCES
    report = data.meta["import"]
    assert report["ignored_columns"] == {str(inter): ["extra", "note"], str(item): ["vec", "rank"]}
    assert report["counts"] == {"rows": 12, "malformed_lines": 0, "interactions_without_time": 1,
                                "duplicate_user_item": 2, "item_rows": 7, "item_malformed_lines": 0,
                                "repeated_item_rows": 1, "out_of_order_timestamps": 4, "tied_timestamps": 1,
                                "items_without_record": 2, "items_without_title": 3}
    assert report["filter_rounds"] == [{"users_removed": 1, "items_removed": 0, "interactions_removed": 1}]
    assert report["time_unit"] == "s"
    # every interaction has a time: the paper's 8:1:1 by global time; the 8 times sorted are
    # 20 40 50 50 70 100 200 300 s -> fit_until = t[int(8 * 0.7)] = 100 s, valid_from = t[6], test_from = t[7]
    assert data.protocol == "global_time"
    assert (data.meta["fit_until"], data.meta["valid_from"], data.meta["test_from"]) == (100_000, 200_000, 300_000)
    assert data.meta["fields"] == ["title", "categories", "brand", "price", "timestamps", "ratings"]
    for split in ("train", "valid", "test"):  # untitled items are never a target nor a negative
        for x in build_instances(data, split, num_candidates=2)[0]:
            assert all(data.has_title(i) for i in x.candidates)


def test_a_plain_csv_and_a_jsonl_items_table_give_the_same_dataset(tmp_path):
    """The atomic case as a CSV (other column names, ISO times, quoted commas) and a JSON-lines items table (lists,
    a '$' price): the same items and sequences."""
    iso = {t: f"1970-01-01T00:{t // 60:02d}:{t % 60:02d}" for t in (10, 20, 40, 50, 60, 70, 100, 150, 200, 300)}
    rows = [["when", "customer", "sku", "stars", "comment"]]
    rows += [[iso.get(r[0], "") + ("Z" if r[0] == 300 else ""), r[3], r[1], r[4], '"a, b"'] for r in INTER[1:]]
    inter = write_rows(tmp_path / "events.csv", rows, sep=",")
    records = [{"sku": "a", "name": "Alpha &amp; Omega  Game", "genres": ["Action", "Adventure"], "maker": "Acme",
                "cost": "$9.99"},
               {"sku": "b", "name": "Beta Game", "genres": ["Racing", "Sim Racing"], "maker": "Bolt"},
               {"sku": "c", "name": "Gamma", "genres": "Puzzle", "cost": 5},
               {"sku": "d", "name": "Delta", "genres": "Party|Music", "maker": "Dz", "cost": 2},
               {"sku": "e", "name": None, "genres": ["Misc"]},
               {"sku": "x", "name": "Unused Item", "cost": "1"},
               {"sku": "a", "name": "Alpha again"}]
    item = tmp_path / "products.jsonl.gz"
    with gzip.open(item, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    cfg = ImportConfig("shop", inter, item, {"user": "customer", "item": "sku", "time": "when", "rating": "stars"},
                       {"id": "sku", "title": "name", "categories": "genres", "brand": "maker", "price": "cost"},
                       min_user_interactions=2)
    data = import_dataset(cfg)
    assert data.items == EXPECTED_ITEMS
    assert sequences(data) == EXPECTED_SEQUENCES
    assert data.meta["import"]["ignored_columns"] == {str(inter): ["comment"], str(item): []}
    cfg.time_unit = "ms"  # declared milliseconds: ISO times are read in ms too
    assert sequences(import_dataset(cfg)) == EXPECTED_SEQUENCES
    cfg.inter = [write_rows(tmp_path / "events.tsv", [[str(v).replace('"', "") for v in row] for row in rows])]
    assert sequences(import_dataset(cfg)) == EXPECTED_SEQUENCES  # the same table tab-separated


def test_k_core_rounds_until_every_user_and_item_has_k(tmp_path):
    # round 1: item d has 1 interaction -> removed; then u4 has 1 -> removed in round 2; a keeps 2 (u1, u2)
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u3", "b"), ("u3", "c"), ("u4", "d"), ("u4", "a")]
    inter = write_rows(tmp_path / "k.inter", [["user_id:token", "item_id:token"], *pairs])
    item = write_rows(tmp_path / "k.item", [["item_id:token", "title:token_seq"],
                                            *[[i, f"Item {i}"] for i in "abcdx"]])
    data = import_dataset(ImportConfig("k", inter, item, k_core=2))
    assert data.meta["import"]["filter_rounds"] == [
        {"users_removed": 0, "items_removed": 1, "interactions_removed": 1},
        {"users_removed": 1, "items_removed": 0, "interactions_removed": 1}]
    assert [r["title"] for r in data.items] == ["Item a", "Item b", "Item c"]  # d and the unused x: not in the core
    assert sequences(data) == [("u1", [0, 1], None, None), ("u2", [0, 2], None, None), ("u3", [1, 2], None, None)]
    assert data.protocol == "leave_one_out"  # no time column
    # without the K-core the never-interacted x stays in the catalogue (a possible negative)
    assert [r["title"] for r in import_dataset(ImportConfig("k", inter, item)).items] == [
        f"Item {i}" for i in "abcdx"]


def test_history_rows_from_several_files_become_one_sequence_per_user(tmp_path):
    """LLMRank's / AgentCF's benchmark files: a row is (user, its history, the next item), one row per target, the
    splits in separate files. The rows repeat prefixes: each (user, item) counts once, at its first place."""
    header = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    train = write_rows(tmp_path / "cds.train.inter", [header, ["u1", "p", "q"], ["u1", "p q", "r"], ["u2", "s", "p"]])
    test = write_rows(tmp_path / "cds.test.inter", [header, ["u1", "p q r", "t"], ["u2", "s p", "q"]])
    item = write_rows(tmp_path / "cds.item", [["item_id:token", "title:token_seq", "category:token_seq"],
                                              *[[i, i.upper(), "Folk; Pop"] for i in "pqrst"]])
    data = import_dataset(ImportConfig("cds", [train, test], item))
    assert sequences(data) == [("u1", [0, 1, 2, 4], None, None), ("u2", [3, 0, 1], None, None)]
    assert data.meta["import"]["counts"]["duplicate_user_item"] == (2 + 3 + 4 - 4) + (2 + 3 - 3)
    assert data.meta["import"]["ignored_columns"] == {str(train): [], str(test): [], str(item): ["category"]}
    assert data.protocol == "leave_one_out"
    timed = write_rows(tmp_path / "t.inter", [header + ["timestamp:float"], ["u1", "p", "q", 5]])
    with pytest.raises(DataError, match=r"t.inter: a history column \(item_id_list\) and a time column"):
        import_dataset(ImportConfig("cds", timed, item))


def _generated(tmp_path: Path, bad: int) -> Path:
    rows = [["user_id:token", "item_id:token", "rating:float"]]
    rows += [[f"u{n % 20}", f"i{n}", 5] for n in range(200 - bad)]
    rows += [["u1", "i1"]] * (bad - 1) + [["u2", "i2", "five"]] * (bad > 0)  # a missing field, a non-number
    return write_rows(tmp_path / "gen.inter", rows)


def test_malformed_lines_are_counted_skips_until_they_pass_one_percent(tmp_path, caplog):
    item = write_rows(tmp_path / "gen.item", [["item_id:token", "title:token_seq"],
                                              *[[f"i{n}", f"Item {n}"] for n in range(200)]])
    with caplog.at_level(logging.WARNING):
        data = import_dataset(ImportConfig("gen", _generated(tmp_path, bad=2), item))
    assert data.meta["import"]["counts"]["malformed_lines"] == 2 and data.meta["import"]["counts"]["rows"] == 200
    assert "gen.inter:200: skipped malformed line (2 fields, the header has 3)" in caplog.text
    assert "gen.inter:201: skipped malformed line (ValueError" in caplog.text
    with pytest.raises(DataError, match=r"gen.inter: 3 of 200 lines are malformed"):
        import_dataset(ImportConfig("gen", _generated(tmp_path, bad=3), item))


@pytest.mark.parametrize("name, text, match", [
    ("empty.inter", "", r"empty.inter: empty file"),
    ("empty.csv", "\n", r"empty.csv: empty file"),
    ("empty.jsonl", "", r"empty.jsonl: empty file"),
    ("nouser.inter", "uid:token\titem_id:token\nu\ti\n", r"nouser.inter: no 'user_id' column .* --columns user="),
    ("noitem.csv", "user_id,product\nu,i\n", r"noitem.csv: no 'item_id' column \(the columns are user_id, "),
    ("untyped.inter", "user_id\titem_id:token\n", r"untyped.inter: header field 'user_id' is not name:type"),
    ("table.xlsx", "x", r"table.xlsx: unknown table kind"),
])
def test_unusable_interaction_files_are_clear_errors_naming_the_file(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        import_dataset(ImportConfig("bad", path))


def test_a_byte_order_mark_is_dropped_and_text_not_in_utf8_is_a_clear_error(tmp_path):
    item = write_rows(tmp_path / "i.item", [["item_id:token", "title:token_seq"], ["a", "Café"], ["b", "B"]])
    inter = tmp_path / "excel.csv"
    inter.write_bytes("\ufeffuser_id,item_id\nu,a\nu,b\n".encode())  # what spreadsheet programs write
    assert sequences(import_dataset(ImportConfig("x", inter, item))) == [("u", [0, 1], None, None)]
    latin = tmp_path / "latin.item"
    latin.write_bytes("item_id:token\ttitle:token_seq\na\tCafé\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.item: unreadable .*tables must be UTF-8 text"):
        import_dataset(ImportConfig("x", inter, latin))


def test_a_malformed_json_line_is_a_counted_skip(tmp_path):
    lines = [json.dumps({"user": "u", "item": f"i{n}"}) for n in range(150)] + ['{"user": "u", "item"']
    inter = tmp_path / "events.jsonl"
    inter.write_text("\n".join(lines) + "\n")
    item = write_rows(tmp_path / "i.item", [["item_id:token", "title:token_seq"],
                                            *[[f"i{n}", "T"] for n in range(150)]])
    data = import_dataset(ImportConfig("x", inter, item, columns={"user": "user", "item": "item"}))
    assert data.meta["import"]["counts"]["malformed_lines"] == 1 and data.meta["import"]["counts"]["rows"] == 151


def test_bad_column_maps_and_splits_are_clear_errors(atomic, tmp_path):
    inter, item = atomic
    with pytest.raises(DataError, match=r"--columns: unknown role\(s\) usr; the roles are user, item"):
        import_dataset(ImportConfig("x", inter, item, columns={"usr": "user_id"}))
    with pytest.raises(DataError, match=r"shop.item: no column 'name' \(given as --item-columns title=name\)"):
        import_dataset(ImportConfig("x", inter, item, item_columns={"title": "name"}))
    with pytest.raises(DataError, match=r"i.item: no 'item_id' column \(the columns are iid\); name it with "
                                        r"--item-columns id="):
        import_dataset(ImportConfig("x", inter, write_rows(tmp_path / "i.item", [["iid:token"], ["a"]])))
    with pytest.raises(DataError, match=r"no item has a title.*give an items table with --item"):
        import_dataset(ImportConfig("x", inter))
    untimed = write_rows(tmp_path / "u.inter", [["user_id:token", "item_id:token"], ["u", "a"], ["u", "b"]])
    with pytest.raises(DataError, match=r"--split global_time needs a time column"):
        import_dataset(ImportConfig("x", untimed, item, split="global_time"))
    by_user = import_dataset(ImportConfig("x", inter, item, split="leave_one_out", time_unit="ms"))
    assert by_user.protocol == "leave_one_out" and by_user.sequences[0].timestamps == [100, 200, 300]


def test_games_exported_to_atomic_files_and_imported_back_is_the_same_dataset(tmp_path):
    games = load_dataset("games")
    inter, item = export_atomic(games, tmp_path / "atomic")
    assert inter.read_text().splitlines()[:2] == ["user_id:token\titem_id:token", "0\t0"]
    back = import_dataset(ImportConfig("games", inter, item))
    assert back.protocol == "leave_one_out" and back.items == games.items
    assert sequences(back) == sequences(games)
    for split in ("train", "valid", "test"):
        assert build_instances(back, split)[0] == load_instances("games", split)


def test_times_in_seconds_become_the_nearest_millisecond(tmp_path):
    # 1078625331.86 * 1000 is 1078625331859.9999 in floating point: truncation would lose a millisecond
    inter = write_rows(tmp_path / "t.inter", [["user_id:token", "item_id:token", "timestamp:float"],
                                              ["u", "a", "1078625331.86"], ["u", "b", "1078625332"]])
    item = write_rows(tmp_path / "t.item", [["item_id:token", "title:token_seq"], ["a", "A"], ["b", "B"]])
    assert import_dataset(ImportConfig("t", inter, item)).sequences[0].timestamps == [1078625331860, 1078625332000]


def test_ratings_are_kept_for_each_user_whose_every_interaction_has_one(tmp_path):
    inter = write_rows(tmp_path / "r.inter", [["user_id:token", "item_id:token", "rating:float"],
                                              ["u", "a", 5], ["u", "b", ""], ["v", "a", 3], ["v", "b", 4]])
    item = write_rows(tmp_path / "r.item", [["item_id:token", "title:token_seq"], ["a", "A"], ["b", "B"]])
    data = import_dataset(ImportConfig("r", inter, item))
    assert sequences(data) == [("u", [0, 1], None, None), ("v", [0, 1], None, [3.0, 4.0])]
    assert data.meta["fields"] == ["title", "ratings"]


def test_beauty2023_with_times_in_ms_and_ratings_comes_back_the_same(tmp_path):
    """Exported times are seconds with three decimals (RecBole's unit); imported back, the same milliseconds."""
    beauty = load_dataset("beauty2023")
    inter, item = export_atomic(beauty, tmp_path)
    assert inter.read_text().splitlines()[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    back = import_dataset(ImportConfig("beauty2023", inter, item, split="leave_one_out"))
    assert back.items == beauty.items and sequences(back) == sequences(beauty)
    assert back.meta["import"]["time_unit"] == "s"
    assert build_instances(back, "test")[0] == load_instances("beauty2023", "test")


def test_the_shipped_atomic_example_is_games_first_300_users(tmp_path):
    """tests/fixtures/games_atomic (docs/data.md's worked example) is what `export games --users 300` writes."""
    written = export_atomic(load_dataset("games"), tmp_path, users=300)
    for path in written:
        assert path.read_bytes() == (FIXTURES / "games_atomic" / path.name).read_bytes()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The worked example of docs/data.md, by its command."""
    out = tmp_path_factory.mktemp("data")
    folder = FIXTURES / "games_atomic"
    done = subprocess.run([sys.executable, "-m", "agenticrec.data", "import", "games_slice", "--inter",
                           str(folder / "games.inter"), "--item", str(folder / "games.item"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return out / "games_slice", json.loads(done.stdout)


def test_the_import_command_writes_a_dataset_that_stats_reads(imported):
    folder, printed = imported
    assert printed["stats"] == {"users": 300, "items": 2990, "items_interacted": 2990, "interactions": 3940,
                                "train_interactions": 3040, "train_instances": 300, "valid_instances": 300,
                                "test_instances": 300}
    done = subprocess.run([sys.executable, "-m", "agenticrec.data", "stats", str(folder)], capture_output=True,
                          text=True, cwd=ROOT)
    assert json.loads(done.stdout) == printed["stats"] == stats(load_dataset(folder))
    games = load_dataset("games")
    by_user = {s.user: s.items for s in games.sequences}
    slice_ = load_dataset(folder)  # the same users' sequences, in the slice's own item ids
    titles = [r["title"] for r in slice_.items]
    assert all([titles[i] for i in s.items] == [games.items[i]["title"] for i in by_user[s.user]]
               for s in slice_.sequences)
    built = subprocess.run([sys.executable, "-m", "agenticrec.data", "instances", str(folder), "--candidates", "5"],
                           capture_output=True, text=True, cwd=ROOT)
    assert json.loads(built.stdout)["test"] == {"instances": 300}
    assert all(len(x.candidates) == 5 for x in load_instances(folder, "test", num_candidates=5))
    again = subprocess.run([sys.executable, "-m", "agenticrec.data", "import", "games_slice", "--inter",
                            str(FIXTURES / "games_atomic" / "games.inter"), "--out", str(folder.parent)],
                           capture_output=True, text=True, cwd=ROOT)
    assert again.returncode != 0 and "already holds a dataset; pass --overwrite" in again.stderr


def test_an_imported_folder_runs_through_evaluate_train_grpo_and_train_ppr(imported, tmp_path, monkeypatch):
    """The scripts take the folder as --dataset, unchanged (a dataset imported under data/ is --dataset NAME)."""
    import evaluate
    import train_grpo
    import train_ppr
    from agenticrec.data import training_sequences
    from agenticrec.ppr import random_pairs, read_pairs
    from grpo_fakes import tiny_policy_folder
    folder = str(imported[0])
    policy = str(tiny_policy_folder(tmp_path / "policy"))
    small = ["--dataset", folder, "--max-turn-tokens", "8", "--max-context", "4096", "--tools", "get_user_profile",
             "--threads", "1"]
    result = evaluate.main(["--checkpoint", policy, *small, "--limit", "40", "--baselines"])
    # popularity by hand: the candidate interacted with most in the training sequences, the first such wins ties
    counts = Counter(i for seq in training_sequences(load_dataset(folder)) for i in seq)
    test = load_instances(folder, "test")[:40]
    top = [max(x.candidates, key=lambda c: (counts[c], -x.candidates.index(c))) for x in test]
    hit1 = sum(t == x.target for t, x in zip(top, test)) / 40
    assert result["instances"] == 40 and result["rows"]["popularity"]["metrics"]["H@1"]["mean"] == hit1
    assert {"agent", "random", "co-occurrence", "SASRec"} <= set(result["rows"])

    grpo = ["--model", policy, *small, "--batch-size", "2", "--group-size", "2", "--eval-instances", "2",
            "--profiles", "none", "--steps", "1", "--out", str(tmp_path / "grpo")]
    train_grpo.main(grpo)
    assert json.loads((tmp_path / "grpo" / "final" / "train_config.json").read_text())["config"]["dataset"] == folder

    def mine(rollout, instances, cfg, info, path, split):  # a random policy never answers: random negatives
        pairs = random_pairs(instances, cfg.seed)
        train_ppr.write_pairs(path, pairs, {"violations": len(pairs)})
        return pairs, {"violations": len(pairs), "violation_rate": 1.0}
    monkeypatch.setattr(train_ppr, "mine", mine)
    train_ppr.main(["--model", policy, *small, "--batch-size", "2", "--group-size", "2", "--eval-instances", "2",
                    "--mine-instances", "4", "--valid-mine-instances", "2", "--steps", "1",
                    "--out", str(tmp_path / "ppr")])
    pairs = read_pairs(tmp_path / "ppr" / "pairs_train.jsonl")  # mined from the imported train instances
    assert [(p.user, p.positive) for p in pairs] == [(x.user, x.target) for x in load_instances(folder, "train")[:4]]
    assert json.loads((tmp_path / "ppr" / "final" / "train_config.json").read_text())["config"]["dataset"] == folder
