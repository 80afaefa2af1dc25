"""The rollout: a scripted model gives exactly the expected ids, masks and rewards; budgets and invalid turns end
trajectories with a named reason; 1,000 rollouts of a random tiny model all terminate."""

from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from agenticrec.agent import (CONTEXT_LIMIT, TOOL_BUDGET_EXCEEDED, TOOLS_DISABLED, TURN_TOKEN_LIMIT, AgentConfig,
                              Rollout, build_prompt)
from agenticrec.data import Instance
from agenticrec.engine import Engine
from agenticrec.model import Qwen3, Qwen3Config
from agenticrec.preset import PresetToolbox
from agenticrec.reward import RewardConfig
from agenticrec.tokenizer import IM_END, tool_call_text, tool_response_ids, train_bpe_tokenizer
from agenticrec.tools import TOOLS, Toolbox, context_for
from test_tools import FakeSASRec, tiny

INSTANCE = Instance("ann", [0, 1, 7, 4, 2], 3, [5, 3, 6, 2, 4], position=5)  # target 3 is candidate [2]
CFG = AgentConfig(answer_length=5, temperature=0.0, max_turn_tokens=200, max_context=4000)


class ScriptedModel(nn.Module):
    """A stand-in policy that emits a fixed script: at absolute position p it puts all mass on script[p + 1]."""

    def __init__(self, script: list[int], vocab_size: int):
        super().__init__()
        self.config = Qwen3Config(vocab_size=vocab_size, hidden_size=1, intermediate_size=1, num_hidden_layers=1,
                                  num_attention_heads=1, num_key_value_heads=1, head_dim=2)
        self.anchor = nn.Parameter(torch.zeros(1))  # the engine reads dtype / device from a parameter
        self.script = script

    def forward(self, ids, positions, kv_cache, last_index):
        last = positions[torch.arange(len(ids)), last_index]
        logits = torch.full((len(ids), self.config.vocab_size), -1e9)
        nxt = [self.script[min(int(p) + 1, len(self.script) - 1)] for p in last]
        logits[torch.arange(len(ids)), nxt] = 0.0
        return logits


@pytest.fixture(scope="module")
def box():
    return Toolbox(tiny(), FakeSASRec())


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def script_for(tokenizer, box, actions, cfg=CFG, instance=INSTANCE):
    """prompt + each turn (mask 1) + each tool response (mask 0), as the rollout should build them."""
    ids = build_prompt(tokenizer, instance, box.data, box, cfg)
    mask = [0] * len(ids)
    context, earlier = context_for(instance, box.data), ()
    for kind, payload in actions:
        turn = encode(tokenizer, payload if kind == "text" else tool_call_text(*payload))
        ids, mask = ids + turn, mask + [1] * len(turn)
        if kind == "call" and payload[0] in box.names:
            result = box.call(payload[0], payload[1], context, earlier)
            earlier += ((payload[0], payload[1]),) if result.error is None else ()
            forced = tool_response_ids(tokenizer, [result.text])
            ids, mask = ids + forced, mask + [0] * len(forced)
    return ids, mask


def run(tokenizer, box, script, cfg=CFG, instance=INSTANCE):
    model = ScriptedModel(script, len(tokenizer))
    return Rollout(Engine(model, cfg.max_context), tokenizer, box.data, box, cfg).run([instance])[0]


def test_scripted_tool_call_then_answer_gives_exact_ids_mask_and_reward(tokenizer, box):
    actions = [("call", ("get_similar_items", {"item_title": "Mario Kart 8"})),
               ("text", "<think>[1] looks closest.</think><answer>\\boxed{[5, 2, 1, 4, 3]}</answer><|im_end|>")]
    ids, mask = script_for(tokenizer, box, actions)
    t = run(tokenizer, box, ids)
    assert t.ids == ids and t.mask == mask
    assert t.logprobs == [0.0] * len(ids)  # greedy on a one-hot policy
    assert t.invalid_reason is None and t.ranking == (4, 3, 5, 2, 6) and t.rank == 2
    assert t.reward == pytest.approx(1 / 1.584962500721156)  # NDCG at rank 2, no bonus
    assert [(c.name, c.arguments, c.error) for c in t.tool_calls] == [
        ("get_similar_items", {"item_title": "Mario Kart 8"}, None)]
    assert t.tokens == {"prompt": t.prompt_len, "generated": sum(mask), "observation": mask.count(0) - t.prompt_len}
    assert t.turns == 2


def test_each_tool_call_sees_the_calls_that_succeeded_before_it(tokenizer):
    box = PresetToolbox(tiny(), FakeSASRec())
    actions = [("call", ("get_session_behavior", {})), ("call", ("get_similar_items", {"item_title": "Zelda 9"})),
               ("call", ("get_similar_users", {})), ("text", "<answer>\\boxed{[5, 4, 2, 1, 3]}</answer><|im_end|>")]
    t = run(tokenizer, box, script_for(tokenizer, box, actions)[0])
    assert [c.error is None for c in t.tool_calls] == [True, False, True] and t.rank == 3
    # co-occurrence of the candidates 5 3 6 2 4 with the history: 2 2 0 4 4; the similar users' taste orders the
    # items 4 3 2 5 6, so the ties {2, 4} and {5, 3} become 4 2 and 3 5: candidates 5 4, then 2 1, then 3
    assert t.tool_calls[2].observation.rsplit("\n", 1)[1] == (
        "Candidates by co-occurrence with the history, then similar users' taste, best first: 5, 4, 2, 1, 3")


def test_first_place_with_a_tool_call_earns_the_bonus(tokenizer, box):
    actions = [("call", ("get_user_profile", {})), ("text", "<answer>\\boxed{[2, 1, 3, 4, 5]}</answer><|im_end|>")]
    t = run(tokenizer, box, script_for(tokenizer, box, actions)[0])
    assert t.rank == 1 and t.reward == pytest.approx(1.1)


def test_tool_budget_is_enforced(tokenizer, box):
    cfg = AgentConfig(answer_length=5, temperature=0.0, max_tool_calls=3, max_context=6000)
    actions = [("call", ("get_user_profile", {}))] * 4
    t = run(tokenizer, box, script_for(tokenizer, box, actions, cfg)[0], cfg)
    assert t.invalid_reason == TOOL_BUDGET_EXCEEDED and len(t.tool_calls) == 3 and t.reward == -1.0


def test_no_tools_mode_hides_schemas_and_rejects_calls(tokenizer, box):
    cfg = AgentConfig(answer_length=5, temperature=0.0, use_tools=False)
    prompt = build_prompt(tokenizer, INSTANCE, box.data, box, cfg)
    assert "<tools>" not in tokenizer.decode(prompt)
    t = run(tokenizer, box, script_for(tokenizer, box, [("call", ("get_user_profile", {}))], cfg)[0], cfg)
    assert t.invalid_reason == TOOLS_DISABLED and t.tool_calls == [] and t.reward == -1.0


def test_turn_and_context_limits_end_trajectories_with_a_reason(tokenizer, box):
    rambling = script_for(tokenizer, box, [("text", "thinking " * 300)])[0]
    t = run(tokenizer, box, rambling, AgentConfig(answer_length=5, temperature=0.0, max_turn_tokens=50))
    assert t.invalid_reason == TURN_TOKEN_LIMIT and sum(t.mask) == 50
    prompt_len = len(build_prompt(tokenizer, INSTANCE, box.data, box, CFG))
    short = AgentConfig(answer_length=5, temperature=0.0, max_context=prompt_len + 30)
    t = run(tokenizer, box, rambling, short)
    assert t.invalid_reason == CONTEXT_LIMIT and len(t.ids) == prompt_len + 30 and t.reward == -1.0


ACTION = st.one_of(
    st.tuples(st.just("call"), st.tuples(st.sampled_from([t.name for t in TOOLS] + ["buy_now"]),
                                         st.sampled_from([{}, {"item_name": "Halo 3"}, {"item_title": 2},
                                                          {"item_name": ""}]))),
    st.tuples(st.just("text"), st.sampled_from(["<answer>\\boxed{[1, 2, 3, 4, 5]}</answer><|im_end|>",
                                                "<answer>\\boxed{[1, 1, 3, 4, 5]}</answer><|im_end|>",
                                                "no idea<|im_end|>"])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(ACTION, min_size=1, max_size=6), budget=st.integers(0, 4))
def test_masks_are_one_exactly_on_sampled_tokens(tokenizer, box, actions, budget):
    """Whatever the policy does, the rollout's ids and mask equal the reconstruction from its turns and
    observations, up to where the trajectory ended."""
    cfg = AgentConfig(answer_length=5, temperature=0.0, max_tool_calls=budget, max_context=8000)
    ids, mask = script_for(tokenizer, box, actions + [("text", "no idea<|im_end|>")], cfg)  # always ends
    t = run(tokenizer, box, ids, cfg)
    assert t.ids == ids[:len(t.ids)] and t.mask == mask[:len(t.ids)]
    assert len(t.tool_calls) <= budget
    assert (t.invalid_reason is None) == (t.ranking is not None)
    assert t.reward == -1.0 if t.invalid_reason else t.reward >= -0.5
    forced = sum(c.observation_ids for c in t.tool_calls)
    assert t.mask.count(0) == t.prompt_len + forced


def test_a_thousand_random_policy_rollouts_terminate_within_budget(box):
    tokenizer = train_bpe_tokenizer(["Halo 3 Mario Kart Zelda <answer>\\boxed{[1, 2]}</answer> get_user_profile"]
                                    * 20, "/tmp/agenticrec-test-bpe", vocab_size=300)
    torch.manual_seed(0)
    model = Qwen3(Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
    cfg = AgentConfig(answer_length=5, temperature=1.0, max_turn_tokens=16, max_context=4096,
                      reward=RewardConfig())
    trajectories = Rollout(Engine(model, cfg.max_context), tokenizer, box.data, box, cfg).run(
        [INSTANCE] * 125, group_size=8, seed=0)
    assert len(trajectories) == 1000
    reasons = Counter(t.invalid_reason for t in trajectories)
    assert sum(reasons.values()) == 1000 and all(t.reward in (-1.0, -0.5) or t.reward > 0 for t in trajectories)
    assert all(sum(t.mask) <= 16 * (len(t.tool_calls) + 1) for t in trajectories)
    print("invalid reasons over 1000 random-policy rollouts:", dict(reasons))


class ContextReader(nn.Module):
    """A stand-in policy that knows its context only through the KV cache. Every forward writes its tokens' ids
    into the cache (as keys, +1 so that an empty slot reads as no token) and reads the row back; the next token
    continues the one script whose prefix the row's cached context is (found by a hash of the whole context), and
    is ``lost`` when no script matches. So a row ends as its script only if the cache held exactly its context at
    every step: through prefix sharing, compaction, forced chunks and slots that earlier rows used."""

    BASE, MOD = 131, (1 << 31) - 1

    def __init__(self, scripts: list[list[int]], vocab_size: int, lost: int):
        super().__init__()
        self.config = Qwen3Config(vocab_size=vocab_size, hidden_size=1, intermediate_size=1, num_hidden_layers=1,
                                  num_attention_heads=1, num_key_value_heads=1, head_dim=2)
        self.anchor = nn.Parameter(torch.zeros(1))  # the engine reads dtype / device from a parameter
        self.lost, self.next_token = lost, {}
        for script in scripts:  # (prefix length, hash of the prefix) -> the token after it
            h = 0
            for p in range(len(script) - 1):
                h = (h * self.BASE + script[p]) % self.MOD
                self.next_token[p + 1, h] = script[p + 1]
        powers = [1]
        for _ in range(8192):
            powers.append(powers[-1] * self.BASE % self.MOD)
        self.powers = torch.tensor(powers)  # t * power < 2**49: a context's sum of products fits in int64

    def forward(self, ids, positions, kv_cache, last_index):
        stored = (ids.float()[:, None, :, None] + 1).expand(-1, 1, -1, 2)  # [B, 1, T, D]: exact in fp32
        kv_len = getattr(kv_cache, "static_len", None) or int(positions.max()) + 1
        keys, _ = kv_cache.update(0, positions, stored, stored, kv_len)
        tokens = keys[:, 0, :, 0].long() - 1  # [B, S]
        lengths = positions[torch.arange(len(ids)), last_index] + 1  # [B]
        exponent = lengths[:, None] - 1 - torch.arange(tokens.shape[1])  # [B, S]: the hash of tokens[:length]
        hashes = (tokens * self.powers[exponent.clamp(min=0)] * (exponent >= 0)).sum(1) % self.MOD
        logits = torch.full((len(ids), self.config.vocab_size), -1e9)
        for b, (length, h) in enumerate(zip(lengths.tolist(), hashes.tolist())):
            logits[b, self.next_token.get((length, h), self.lost)] = 0.0
        return logits


class RandomSASRec:
    """Seeded random item vectors (what the collaborative tools need from SASRec); a user is their history's mean."""

    def __init__(self, n_items: int):
        self.vectors = torch.randn(n_items, 8, generator=torch.Generator().manual_seed(0))

    def item_embeddings(self):
        return self.vectors

    def user_embedding(self, histories):
        return torch.stack([self.vectors[h].mean(0) for h in histories])


@pytest.fixture(scope="module")
def preset_scripts(tmp_path_factory):
    """200 Games valid instances under the preset (its tokenizer, short titles, ordering lines) and each one's
    scripted expert trajectory: one or two ranking tools, so lengths differ by hundreds of tokens."""
    import random

    from agenticrec import preset
    from agenticrec.data import load_dataset
    from agenticrec.warmstart import expert_trajectory

    data = load_dataset("games")
    tokenizer = preset.preset_tokenizer(data, tmp_path_factory.mktemp("tokenizer"), split_digits=False)
    prompt_data = preset.prompt_data(data, {"title_chars": preset.TITLE_CHARS})
    toolbox = preset.PresetToolbox(data, RandomSASRec(len(data.items)))
    cfg = AgentConfig(temperature=0.0, max_turn_tokens=200, max_context=4096)
    instances, rng = data.fixed_instances("valid")[:200], random.Random(0)
    scripts = [expert_trajectory(tokenizer, prompt_data, toolbox, x, cfg, rng, further_call=0.3) for x in instances]
    return tokenizer, prompt_data, toolbox, cfg, instances, scripts


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_continuous_batching_keeps_200_preset_trajectories_exactly(preset_scripts, decode):
    """Each of 200 preset instances' rows follows its own expert script, greedy, in groups of 2: chunked calls of
    50 instances as the evaluation makes them, and one call through 48 slots whose freed slots take the queued
    groups. Both give every row its script (ids and masks) and the same answers and rewards."""
    tokenizer, prompt_data, toolbox, cfg, instances, scripts = preset_scripts
    model = ContextReader([ids for ids, _ in scripts], len(tokenizer), lost=tokenizer.convert_tokens_to_ids(IM_END))

    def rollout():
        return Rollout(Engine(model, cfg.max_context, decode=decode), tokenizer, prompt_data, toolbox, cfg)

    chunked = [t for c in range(0, 200, 50) for t in rollout().run(instances[c:c + 50], group_size=2)]
    queued = rollout()
    continuous = queued.run(instances, group_size=2, slots=48)
    sampled = [sum(mask) for _, mask in scripts]
    assert max(sampled) - min(sampled) > 20 and max(queued.engine.steps) == 48 and len(queued.engine.steps) > 300
    for n, (chunk_t, cb_t) in enumerate(zip(chunked, continuous)):
        ids, mask = scripts[n // 2]
        assert (cb_t.ids, cb_t.mask) == (ids, mask) and (chunk_t.ids, chunk_t.mask) == (ids, mask), n
        assert cb_t.invalid_reason is None and (cb_t.ranking, cb_t.reward) == (chunk_t.ranking, chunk_t.reward)
