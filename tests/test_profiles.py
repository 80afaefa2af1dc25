"""get_user_profile serves the backbone LLM's offline profiles: generated once per (user, history), cached, reused,
split over ranks without duplicates; a history without one falls back to statistics."""

import json

import pytest
import torch

from agenticrec import distributed as D
from agenticrec.data import DataError, Instance, read_jsonl
from agenticrec.engine import generate
from agenticrec.model import Qwen3, Qwen3Config
from agenticrec.profiles import PROFILE_PROMPT, build_profiles, load_profiles
from agenticrec.tokenizer import render_chat, train_bpe_tokenizer
from agenticrec.tools import Toolbox, context_for, profile_key
from grpo_fakes import run_worker
from test_tools import FakeSASRec, tiny

SINGLE = D.DistInfo(0, 1, 0, torch.device("cpu"), None)
INSTANCES = [Instance("ann", [0, 1, 7, 4, 2], 3, [3, 5, 6, 2, 4], position=5),
             Instance("ann", [0, 1, 7, 4, 2], 5, [5, 3, 6, 2, 4], position=5),  # the same history: one profile
             Instance("bob", [2, 3, 5, 0], 1, [1, 4, 6], position=4),
             Instance("cat", [0, 7, 1], 2, [2, 6, 3], position=3)]


def tiny_lm(folder):
    """A random 1-layer Qwen3 and a small BPE: it writes nonsense, deterministically."""
    tokenizer = train_bpe_tokenizer(["Halo 3 Mario Kart Zelda preferences"] * 20, folder / "tok", vocab_size=300)
    torch.manual_seed(0)
    model = Qwen3(Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
    return model, tokenizer


def expected_profile(model, tokenizer, data, history) -> str:
    """The profile written out: the prompt rendered, 8 greedy tokens, the stop token removed."""
    prompt = render_chat(tokenizer, [{"role": "user", "content": PROFILE_PROMPT.format(
        history="\n".join(f"- {data.title(i)}" for i in history))}])
    ids = generate(model, [prompt], 8, stop_token_ids=[tokenizer.eos_token_id])[0]
    return tokenizer.decode([i for i in ids if i != tokenizer.eos_token_id]).strip()


def test_profiles_are_generated_once_cached_and_served(tmp_path):
    model, tokenizer = tiny_lm(tmp_path)
    data, path = tiny(), tmp_path / "profiles.jsonl.gz"
    profiles = build_profiles(model, tokenizer, data, INSTANCES[:2], path, SINGLE, max_new_tokens=8)
    ctx = context_for(INSTANCES[0], data)
    assert profiles == {profile_key(ctx): expected_profile(model, tokenizer, data, ctx.history)}
    assert len(list(read_jsonl(path))) == 1
    served = Toolbox(data, FakeSASRec(), profiles=profiles).call("get_user_profile", {}, ctx)
    assert served.text == profiles[profile_key(ctx)][:1500] and served.error is None

    class Untouchable(torch.nn.Module):  # a second build of cached keys must not generate anything
        def forward(self, *args, **kwargs):
            raise AssertionError("generated a cached profile again")
    assert build_profiles(Untouchable(), tokenizer, data, INSTANCES[:2], path, SINGLE) == profiles
    more = build_profiles(model, tokenizer, data, INSTANCES, path, SINGLE, max_new_tokens=8)  # extends the cache
    assert len(more) == 3 and more[profile_key(ctx)] == profiles[profile_key(ctx)]
    assert load_profiles(path) == more


def test_a_history_without_a_profile_gets_the_statistics():
    data = tiny()
    ctx = context_for(INSTANCES[2], data)
    box = Toolbox(data, FakeSASRec(), profiles={profile_key(context_for(INSTANCES[0], data)): "Likes shooters."})
    assert box.call("get_user_profile", {}, context_for(INSTANCES[0], data)).text == "Likes shooters."
    assert box.call("get_user_profile", {}, ctx).text.startswith("4 past items. Long-term interests (categories):")


def test_the_profile_build_runs_once_under_two_gloo_ranks(tmp_path):
    """Each rank generates its share of the missing profiles; rank 0 writes them all."""
    run_worker(tmp_path / "cache.jsonl.gz", "profiles", ranks=2)
    counts = [json.loads((tmp_path / f"generated_rank{r}.json").read_text()) for r in range(2)]
    keys = {profile_key(context_for(x, tiny())) for x in INSTANCES}
    assert set(load_profiles(tmp_path / "cache.jsonl.gz")) == keys
    assert sorted(counts) == [1, 2] and sum(counts) == len(keys)  # 3 histories over 2 ranks, each generated once


def test_a_corrupt_cache_is_an_error_not_a_rebuild(tmp_path):
    path = tmp_path / "profiles.jsonl"
    path.write_text("\n".join(["{not json"] * 5))
    with pytest.raises(DataError, match="5 of 5 lines are malformed"):
        load_profiles(path)


def test_rounds_give_every_rank_as_many_rounds_and_each_item_once():
    """D.rounds (profile builds, PPR mining): 5 items, 2 ranks, 2 per round: rank 1's last round is empty, so a
    collective after each round pairs up on both ranks."""
    ranks = [D.rounds(5, 2, D.DistInfo(r, 2, r, torch.device("cpu"), None)) for r in range(2)]
    assert ranks == [[(0, [0, 2]), (2, [4])], [(0, [1, 3]), (2, [])]]
