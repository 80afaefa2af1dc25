"""The seven tools on a tiny hand-made catalog: exact outputs, error observations, no leakage, never raising."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agenticrec.data import Dataset, Instance, Sequence
from agenticrec.tools import TOOLS, Toolbox, ToolContext, context_for

ITEMS = [
    {"id": 0, "title": "Halo 3", "categories": ["Games", "Shooter"], "brand": "Microsoft", "price": 20.0,
     "average_rating": 4.5, "rating_count": 100},
    {"id": 1, "title": "Halo Reach", "categories": ["Games", "Shooter"], "brand": "Microsoft", "price": 30.0},
    {"id": 2, "title": "Mario Kart 8", "categories": ["Games", "Racing"], "brand": "Nintendo", "price": 50.0},
    {"id": 3, "title": "Super Mario Odyssey", "categories": ["Games", "Platformer"], "brand": "Nintendo",
     "price": 60.0},
    {"id": 4, "title": "Forza Horizon", "categories": ["Games", "Racing"], "brand": "Microsoft", "price": 40.0},
    {"id": 5, "title": "Zelda Breath of the Wild", "categories": ["Games", "Adventure"], "brand": "Nintendo"},
    {"id": 6, "title": "Tetris", "categories": ["Games", "Puzzle"]},
    {"id": 7, "title": "Doom Eternal", "categories": ["Games", "Shooter"], "price": 25.0},
]
DAY = 86_400_000
SEQUENCES = [  # (user, items, days, ratings); leave-one-out: the tools fit on all but the last three items
    ("ann", [0, 1, 7, 4, 2, 3, 5, 6], [0, 0, 1, 5, 5, 9, 12, 13], [5, 4, 2, 3, 5, 4, 5, 1]),
    ("bob", [2, 3, 5, 0, 1, 4, 6], [0, 1, 2, 3, 4, 5, 6], [5, 5, 4, 3, 3, 4, 2]),
    ("cat", [0, 7, 1, 2, 6, 3], [0, 1, 2, 3, 4, 5], [4, 4, 4, 4, 4, 4]),
]


class FakeSASRec:
    """Hand-set embeddings: item vectors below; a user is the mean of their history's item vectors."""

    vectors = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 0.9, 0.2], [0.5, 0.5, 0.0],
                            [0.0, 0.6, 0.8], [0.0, 0.0, 1.0], [0.8, 0.0, 0.3]])

    def item_embeddings(self):
        return self.vectors

    def user_embedding(self, histories):
        return torch.stack([self.vectors[h].mean(0) for h in histories])


def tiny() -> Dataset:
    seqs = [Sequence(u, items, [d * DAY for d in days], [float(r) for r in ratings])
            for u, items, days, ratings in SEQUENCES]
    return Dataset("tiny", {"name": "tiny", "split": "leave_one_out"}, [dict(i) for i in ITEMS], seqs)


@pytest.fixture(scope="module")
def box():
    return Toolbox(tiny(), FakeSASRec())


CTX = ToolContext("ann", history=(0, 1, 7, 4, 2), candidates=(3, 5, 6, 2, 4), history_ratings=(5.0, 4.0, 2.0, 3.0, 5.0),
                  history_timestamps=(0, 0, DAY, 5 * DAY, 5 * DAY))


def call(box, name, **arguments):
    result = box.call(name, arguments, CTX)
    assert result.error is None, result.text
    return result.text


def test_popularity_is_fitted_on_tool_training_data_only(box):
    # ann: 0 1 7 4 2 ; bob: 2 3 5 0 ; cat: 0 7 1  (each sequence minus its last three items)
    assert box.popularity.tolist() == [3, 2, 2, 1, 1, 1, 0, 2]


def test_get_user_profile(box):
    assert call(box, "get_user_profile") == (
        "5 past items. Long-term interests (categories): Shooter (3), Racing (2). Brands: Microsoft (3), "
        "Nintendo (1). Price range: $20.00-$50.00 (median $30.00). Typical popularity rank of past items: 3 of 8.")


def test_item_info_search_by_title_fuzzy_title_and_candidate_number(box):
    full = ("Halo 3; categories: Games > Shooter; brand: Microsoft; price: $20.00; rating: 4.5/5 from 100 ratings; "
            "popularity: 3 past interactions (rank 1 of 8).")
    assert call(box, "item_info_search", item_name="Halo 3") == full
    assert call(box, "item_info_search", item_name="  halo-3 ") == full
    assert call(box, "item_info_search", item_name="Zelda Breath of Wild") == (
        "[2] Zelda Breath of the Wild; categories: Games > Adventure; brand: Nintendo; popularity: 1 past "
        "interactions (rank 7 of 8). Not available in this dataset: price, rating.")
    assert call(box, "item_info_search", item_name=3).startswith("[3] Tetris; categories: Games > Puzzle;")
    assert call(box, "item_info_search", item_name="h1") == full  # history item 1 is Halo 3


def test_candidates_analyze(box):
    assert call(box, "candidates_analyze") == (
        "Racing (2): [4] $50, [5] $40\nPlatformer (1): [1] $60\nAdventure (1): [2]\nPuzzle (1): [3]\n"
        "Past interactions, most first: 2, 1, 1, 1, 0")


def test_get_session_behavior(box):
    assert call(box, "get_session_behavior") == (
        "2 sessions (sessions split at gaps over one day), oldest first:\n"
        "1. 3 items (categories): Shooter (3)\n2. 2 items (categories): Racing (2)")  # a gap of exactly 1 day stays


def test_get_rating_behavior(box):
    assert call(box, "get_rating_behavior") == (
        "high (4-5): Halo 3; Halo Reach; [4] Mario Kart 8\nmedium (3): [5] Forza Horizon\nlow (1-2): Doom Eternal")


def test_get_similar_items(box):
    assert call(box, "get_similar_items", item_title="Mario Kart 8") == (
        "Most similar to [4] Mario Kart 8: [1] Super Mario Odyssey; [5] Forza Horizon; [2] Zelda Breath of the "
        "Wild.\nCosine, most similar first: 1.00, 0.97, 0.71, 0.60, 0.00")


def test_get_similar_users(box):
    # ann is excluded from her own neighbours; cat (recent train items 0 7 1, cosine 0.91 to ann's mean vector)
    # comes before bob (3 5 0, cosine 0.73); Halo 3 is in both.
    assert call(box, "get_similar_users") == (
        "Recent items of the 5 most similar users: Halo 3; Doom Eternal; Halo Reach; [1] Super Mario Odyssey; "
        "[2] Zelda Breath of the Wild.\nCandidates among them: [1] x1, [2] x1.")


def test_datasets_without_ratings_or_categories_say_so(box):
    no_ratings = ToolContext("ann", (0, 1), (2, 3))
    assert box.call("get_rating_behavior", {}, no_ratings).text == "Ratings are not available in this dataset."
    data = tiny()
    for item in data.items:
        item.pop("categories", None)
    plain = Toolbox(data, None)
    assert plain.call("candidates_analyze", {}, CTX).text == (
        "No categories in this dataset.\nPast interactions, most first: 2, 1, 1, 1, 0")
    assert "get_similar_items" not in plain.names  # no SASRec: the collaborative tools are not offered


@pytest.mark.parametrize("name, arguments, error", [
    ("item_info_search", {"item_name": ""}, "empty item name"),
    ("item_info_search", {"item_name": "Minecraft"}, "no item matches 'Minecraft'"),
    ("item_info_search", {"item_name": 9}, "there is no candidate 9 (candidates are 1..5)"),
    ("item_info_search", {"item_name": "h6"}, "there is no history item 6 (history items are h1..h5)"),
    ("item_info_search", {"item_name": ["Halo 3"]}, "expected an item title or a candidate number, got list"),
    ("item_info_search", {"item_name": True}, "expected an item title or a candidate number, got bool"),
    ("item_info_search", {}, "item_info_search needs the argument 'item_name'"),
    ("get_user_profile", {"user": "ann"}, "get_user_profile takes no argument 'user'"),
    ("get_similar_items", "Halo 3", "arguments must be a JSON object, got str"),
    ("buy_now", {}, "unknown tool 'buy_now'"),
])
def test_bad_arguments_give_error_observations(box, name, arguments, error):
    result = box.call(name, arguments, CTX)
    assert result.error.startswith(error) and result.text == f"error: {result.error}"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                                max_size=3), max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from([t.name for t in TOOLS] + ["", "x"]),
       arguments=st.one_of(JSON, st.dictionaries(st.sampled_from(["item_name", "item_title", "other"]), JSON,
                                                 max_size=2)))
def test_arbitrary_arguments_never_raise(box, name, arguments):
    result = box.call(name, arguments, CTX)
    assert isinstance(result.text, str) and result.text
    assert result.error is None or not result.error.startswith("internal"), result.error


def test_outputs_do_not_depend_on_which_candidate_is_the_target(box):
    """The tools see a ToolContext, which has no target: the same instance with another candidate as the target
    gives byte-identical observations."""
    data = box.data
    x = Instance("ann", [0, 1, 7, 4, 2], 3, [3, 5, 6, 2, 4], position=5)
    for other in x.candidates:
        swapped = Instance(x.user, x.history, other, x.candidates, x.position, x.split)
        for tool in box.tools:
            args = {p: x.history[-1] for p in tool.parameters}
            assert box.call(tool.name, args, context_for(swapped, data)).text == \
                box.call(tool.name, args, context_for(x, data)).text
    assert "target" not in ToolContext.__dataclass_fields__


def test_the_context_of_an_ab_question_carries_its_direction_and_the_paper_tools_ignore_it(box):
    from agenticrec.tasks import LESS, MORE, PreferenceTask
    x = Instance("ann", [0, 1, 7, 4, 2], 3, [3, 2], position=5)
    assert context_for(x, box.data).direction is None
    contexts = {d: context_for(PreferenceTask(x.user, x.history, 3, x.candidates, x.position, "train", d), box.data)
                for d in (MORE, LESS)}
    assert {d: c.direction for d, c in contexts.items()} == {MORE: MORE, LESS: LESS}
    for tool in box.tools:  # the paper's toolbox: the same observation for both questions and the ranking request
        args = {p: x.history[-1] for p in tool.parameters}
        texts = {box.call(tool.name, args, c).text for c in (*contexts.values(), context_for(x, box.data))}
        assert len(texts) == 1


def test_schemas_are_qwen3_tool_format(box):
    schemas = box.schemas
    assert [s["function"]["name"] for s in schemas] == [t.name for t in TOOLS]
    assert all(s["type"] == "function" and s["function"]["parameters"]["type"] == "object" for s in schemas)
    json.dumps(schemas)


HASH_SEED_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from test_tools import CTX, FakeSASRec, tiny
from agenticrec.tools import Toolbox
data = tiny()
for item in data.items:  # title keywords stand in for categories: ties among them must not follow set order
    item.pop("categories", None)
box = Toolbox(data, FakeSASRec())
for name, arguments in [("get_user_profile", {}), ("candidates_analyze", {}), ("get_session_behavior", {}),
                        ("get_rating_behavior", {}), ("get_similar_items", {"item_title": "h1"}),
                        ("get_similar_users", {}), ("item_info_search", {"item_name": "breath wild zelda"})]:
    print(box.call(name, arguments, CTX).text)
"""


def test_observations_do_not_depend_on_the_string_hash_seed():
    """Python salts str hashes per process (PYTHONHASHSEED), so iterating a set of words gives another order in
    another process: an observation built that way differs between two runs of the same command."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    outputs = [subprocess.run([sys.executable, "-c", HASH_SEED_SCRIPT, str(Path(__file__).parent)], check=True,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3", "4")]
    assert "title keywords" in outputs[0] and "Zelda" in outputs[0]
    assert outputs[1:] == outputs[:1] * 3
