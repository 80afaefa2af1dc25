"""The KV-cached engine: parity with transformers' generate, cached logits against full recomputation, sampling
determinism and log-probs, prefix sharing, multi-turn forced chunks, stop conditions."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agenticrec.engine import Engine, SamplingParams, filter_top_k_top_p, generate
from agenticrec.model import load_pretrained
from test_model import hf_model, qwen3_configs

VOCAB = 300


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours, transformers') on the same random weights."""
    theirs = hf_model(vocab_size=VOCAB, num_hidden_layers=3, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("model")
    theirs.save_pretrained(folder)
    return load_pretrained(folder).eval(), theirs


@pytest.fixture(scope="module")
def model(pair):
    return pair[0]


def random_prompts(lengths, seed=0, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def next_logits(model, ids) -> torch.Tensor:
    """Full recomputation without a cache: the logits after the last id, [V]."""
    return model(torch.tensor([ids]))[0, -1]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=qwen3_configs(), lengths=st.lists(st.integers(1, 60), min_size=2, max_size=5),
       seed=st.integers(0, 2**16))
def test_greedy_matches_transformers_generate_on_ragged_batches(tmp_path_factory, cfg, lengths, seed):
    theirs = hf_model(seed, **cfg)
    folder = tmp_path_factory.mktemp("gen")
    theirs.save_pretrained(folder)
    ours = load_pretrained(folder).eval()
    prompts = random_prompts(lengths, seed, cfg["vocab_size"])
    eos = 3  # random weights hit it now and then: rows stop at different steps and are compacted out
    got = generate(ours, prompts, max_new_tokens=24, stop_token_ids=[eos])
    for prompt, new in zip(prompts, got):
        ref = theirs.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=0)
        assert new == ref[0, len(prompt):].tolist()


@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_fixed_shape_decode_eager_and_compiled_matches_transformers_generate(pair, decode):
    """The fixed-shape step (every slot, every position, masked per row), eagerly and under torch.compile
    (inductor's C++ backend here): the greedy tokens of transformers' generate, on ragged rows that stop at
    different steps (so slots go idle while others decode)."""
    ours, theirs = pair
    prompts = random_prompts([9, 31, 4, 17, 12], seed=5)
    eos = 3
    got = generate(ours, prompts, max_new_tokens=20, stop_token_ids=[eos], decode=decode)
    for prompt, new in zip(prompts, got):
        ref = theirs.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=0)
        assert new == ref[0, len(prompt):].tolist()
    assert got == generate(ours, prompts, max_new_tokens=20, stop_token_ids=[eos])  # and the dynamic step's


def assert_cache_matches_recomputation(model, rows, logits):
    for ids, cached in zip(rows, logits):
        assert (cached.float() - next_logits(model, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("token_budget", [4096, 45])
def test_cached_logits_equal_full_recomputation(model, monkeypatch, token_budget):
    """After prefill of ragged prompts, after 50 decode steps, and after forced chunks of 1-40 ids to some rows
    (the top-left causal-mask bug shows up exactly there), then after further decoding. With a token budget of 45
    the prompts and the chunks go through several forwards each."""
    import agenticrec.engine as E
    monkeypatch.setattr(E, "PREFILL_TOKEN_BUDGET", token_budget)
    engine = Engine(model, max_len=400)
    rows = random_prompts([7, 33, 1, 60, 18])
    logits = engine.prefill(rows)
    assert_cache_matches_recomputation(model, rows, logits)
    g = torch.Generator().manual_seed(1)
    for step in range(50):
        pending = [[t] for t in torch.randint(0, VOCAB, (len(rows),), generator=g).tolist()]
        logits = engine.feed(pending)
        rows = [r + p for r, p in zip(rows, pending)]
    assert_cache_matches_recomputation(model, rows, logits)
    for chunk_lengths in ([1, 40, 0, 17, 0], [0, 2, 39, 0, 25], [40, 1, 1, 40, 3]):
        pending = [torch.randint(0, VOCAB, (1 + n,), generator=g).tolist() for n in chunk_lengths]
        logits = engine.feed(pending)
        rows = [r + p for r, p in zip(rows, pending)]
        assert_cache_matches_recomputation(model, rows, logits)
    for step in range(5):
        pending = [[t] for t in torch.randint(0, VOCAB, (len(rows),), generator=g).tolist()]
        logits = engine.feed(pending)
        rows = [r + p for r, p in zip(rows, pending)]
    assert_cache_matches_recomputation(model, rows, logits)
    keep = [4, 1]  # compaction keeps each surviving row's cache
    engine.keep(keep)
    logits = engine.feed([[5], [6, 7, 8]])
    assert_cache_matches_recomputation(model, [rows[4] + [5], rows[1] + [6, 7, 8]], logits)


def test_token_budget_groups_partition_by_length_within_the_budget():
    from agenticrec.engine import token_budget_groups
    lengths = [7, 33, 1, 60, 18, 40, 2]
    groups = token_budget_groups(lengths, budget=45)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [[lengths[i] for i in g] for g in groups] == [[1, 2, 7], [18], [33], [40], [60]]
    assert all(len(g) * max(lengths[i] for i in g) <= 45 or len(g) == 1 for g in groups)


def test_same_seed_same_samples_and_different_seed_different_samples(model):
    prompts = random_prompts([5, 12, 30])
    kwargs = dict(max_new_tokens=40, temperature=1.0)
    a = generate(model, prompts, seed=7, **kwargs)
    assert a == generate(model, prompts, seed=7, **kwargs)
    assert a != generate(model, prompts, seed=8, **kwargs)


@pytest.mark.parametrize("temperature", [0.0, 0.6, 1.3])
def test_logprobs_match_tempered_log_softmax_of_a_recomputation(model, temperature):
    params = SamplingParams(temperature=temperature, max_new_tokens=30)
    rows = Engine(model, max_len=200).run(random_prompts([4, 25, 11]), params, seed=3)
    for row in rows:
        with torch.no_grad():
            logits = model(torch.tensor([row.ids]))[0].float()  # [T, V]
        t = temperature or 1.0
        expected = (logits[:-1] / t).log_softmax(-1).gather(-1, torch.tensor(row.ids[1:])[:, None])[:, 0]
        sampled = torch.tensor(row.mask[1:], dtype=torch.bool)
        assert sampled.sum() == 30
        assert torch.allclose(torch.tensor(row.logprobs[1:])[sampled], expected[sampled], atol=1e-5)
        assert all(lp == 0.0 for lp, m in zip(row.logprobs, row.mask) if m == 0)


def test_prefix_sharing_gives_each_group_member_its_own_sample(model):
    prompts = random_prompts([9, 21])
    greedy = Engine(model, 100).run(prompts, SamplingParams(max_new_tokens=12), group_size=4)
    alone = generate(model, prompts, max_new_tokens=12)
    assert [r.new_ids for r in greedy] == [alone[0]] * 4 + [alone[1]] * 4
    sampled = Engine(model, 100).run(prompts, SamplingParams(temperature=1.0, max_new_tokens=12), group_size=4,
                                     seed=0)
    assert len({tuple(r.new_ids) for r in sampled[:4]}) > 1  # shared prefill, independent samples
    assert all(r.ids[:r.prompt_len] == prompts[i // 4] for i, r in enumerate(sampled))


def test_multi_turn_forced_chunks_are_masked_and_consistent(model):
    """A handler that forces a 'tool response' after each turn: the mask marks forced ids 0, the logprobs of
    later sampled tokens are those of the full sequence (so the cache saw the forced ids)."""
    forced = {0: [[11, 12, 13]], 1: [[20] * 40, [21]], 2: []}

    def on_turn_end(r, row):
        return forced[r].pop(0) if forced[r] else None

    params = SamplingParams(temperature=0.8, max_new_tokens=6)
    prompts = random_prompts([10, 3, 27])
    rows = Engine(model, max_len=300).run(prompts, params, on_turn_end=on_turn_end, seed=0)
    assert [r.turns for r in rows] == [2, 3, 1]
    assert all(r.finish_reason == "done" and r.stop_reason == "max_new_tokens" for r in rows)
    row = rows[1]
    expected_mask = [0] * 3 + [1] * 6 + [0] * 40 + [1] * 6 + [0] + [1] * 6
    assert row.mask == expected_mask
    assert row.ids[9:49] == [20] * 40 and row.ids[55] == 21
    for row in rows:
        with torch.no_grad():
            logits = model(torch.tensor([row.ids]))[0].float()
        expected = (logits[:-1] / 0.8).log_softmax(-1).gather(-1, torch.tensor(row.ids[1:])[:, None])[:, 0]
        sampled = torch.tensor(row.mask[1:], dtype=torch.bool)
        assert torch.allclose(torch.tensor(row.logprobs[1:])[sampled], expected[sampled], atol=1e-5)


def test_stop_sequences_stop_tokens_and_limits(model):
    prompt = random_prompts([6])[0]
    free = generate(model, [prompt], max_new_tokens=30)[0]
    seq = tuple(free[4:6])  # a two-token sequence the greedy continuation contains
    params = SamplingParams(max_new_tokens=30, stop_sequences=(seq,))
    row = Engine(model, 100).run([prompt], params)[0]
    assert row.stop_reason == "stop_sequence" and tuple(row.new_ids[-2:]) == seq
    assert len(row.new_ids) == next(i + 2 for i in range(29) if tuple(free[i:i + 2]) == seq)
    row = Engine(model, 100).run([prompt], SamplingParams(max_new_tokens=30, stop_token_ids=(free[3],)))[0]
    assert row.stop_reason == "stop_token" and row.new_ids == free[:free.index(free[3]) + 1]
    row = Engine(model, len(prompt) + 10).run([prompt], SamplingParams(max_new_tokens=30))[0]
    assert row.finish_reason == "context" and len(row.ids) == len(prompt) + 10 and row.new_ids == free[:10]
    # forced ids that would not fit finish the row instead of being cut
    row = Engine(model, len(prompt) + 12).run([prompt], SamplingParams(max_new_tokens=3),
                                              on_turn_end=lambda r, row: [1] * 9)[0]
    assert row.finish_reason == "context" and len(row.ids) == len(prompt) + 3
    with pytest.raises(ValueError, match="do not fit max_len"):
        Engine(model, 5).run([prompt], SamplingParams())


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(filter_top_k_top_p(logits, 2, 1.0)).tolist() == [[False, True, False, True]]
    probs = logits.softmax(-1)[0]  # [0.64, 0.09, 0.24, 0.03]
    p = float(probs[0] + probs[2]) - 1e-4  # the two largest reach p: the third is dropped
    assert torch.isinf(filter_top_k_top_p(logits, 0, p)).tolist() == [[False, True, False, True]]
    assert torch.isinf(filter_top_k_top_p(logits, 0, 1e-6)).tolist() == [[False, True, True, True]]


def test_top_k_one_sampling_is_greedy(model):
    prompts = random_prompts([8, 14])
    assert generate(model, prompts, 20, temperature=1.0, top_k=1, seed=0) == generate(model, prompts, 20)


def test_the_kv_cache_stays_within_its_byte_budget_through_sharing_and_compaction(model, monkeypatch):
    """One cache per call, allocated once at the context limit and never reallocated: its bytes are within the
    budget, and prefix sharing and compaction move rows in place (they allocate less than one row's worth).
    A call with more rows than the budget holds queues them in the same slots; a group larger than the cache is
    refused before anything is allocated."""
    from agenticrec.engine import KVCache, kv_bytes_per_token
    from agenticrec.memtrace import allocation_peak

    max_len = 200
    row_bytes = max_len * kv_bytes_per_token(model.config, torch.float32)
    engine = Engine(model, max_len=max_len, kv_budget=6 * row_bytes + row_bytes // 2)
    assert engine.max_rows == 6
    caches, moves = [], []
    real_init, real_move = KVCache.__init__, KVCache.move_rows

    def recording_init(self, *args):
        real_init(self, *args)
        caches.append((self, [t.data_ptr() for t in self.k], [t.data_ptr() for t in self.v]))

    def measured_move(self, index):
        with allocation_peak() as peak:
            real_move(self, index)
        moves.append((list(index), peak.total))

    monkeypatch.setattr(KVCache, "__init__", recording_init)
    monkeypatch.setattr(KVCache, "move_rows", measured_move)
    turns = {r: [[7] * (5 + 10 * r)] * (r % 3) for r in range(6)}  # 0-2 forced observations: ragged finishes
    rows = engine.run(random_prompts([12, 30, 5]), SamplingParams(temperature=1.0, max_new_tokens=8),
                      on_turn_end=lambda r, row: turns[r].pop() if turns[r] else None, group_size=2, seed=0)
    assert sorted(r.turns for r in rows) == [1, 1, 2, 2, 3, 3]
    (cache, k_ptr, v_ptr), = caches  # one cache for the call ...
    assert cache.nbytes == 6 * row_bytes <= engine.kv_budget
    assert ([t.data_ptr() for t in cache.k], [t.data_ptr() for t in cache.v], cache.capacity) == (
        k_ptr, v_ptr, max_len)  # ... never moved
    assert moves[0][0] == [0, 0, 1, 1, 2, 2] and len(moves) >= 3  # prefix sharing, then compactions
    assert all(allocated < row_bytes for _, allocated in moves), moves
    assert engine.cache is None  # freed when the call returns
    # more rows than the budget holds: the same 6 slots, the fourth group queued until a group's slots free up
    queued = engine.run(random_prompts([4] * 4), SamplingParams(max_new_tokens=2), group_size=2)
    assert [len(r.new_ids) for r in queued] == [2] * 8 and engine.steps == [6, 6, 2, 2]
    assert [c.nbytes for c, _, _ in caches] == [6 * row_bytes] * 2
    with pytest.raises(ValueError, match=r"a group of 7 rows does not fit in 6 slots \(the KV budget of .* holds 6"):
        engine.run(random_prompts([4]), SamplingParams(max_new_tokens=2), group_size=7)
    assert len(caches) == 2


@pytest.mark.parametrize("group_size, slots, forced, decode", [(3, 6, True, "dynamic"), (1, 3, False, "dynamic"),
                                                               (3, 6, True, "static")])
def test_continuous_batching_gives_the_same_greedy_rows_and_keeps_the_slots_full(model, group_size, slots, forced,
                                                                                 decode):
    """Four groups through fewer slots than rows: the first groups start, and each later group takes the slots of
    finished ones. Every row (ids, masks, log-probs, turns, finish reasons) equals the run that holds all rows at
    once: with forced multi-token chunks and rows that finish at very different times, and (no chunks) with all
    running rows finishing in the same step."""
    prompts = random_prompts([9, 25, 4, 14], seed=3)
    turns = {r: [[11] * (3 + r)] * (r % 4 if forced else 0) for r in range(4 * group_size)}

    def run(slots):
        pending = {r: list(chunks) for r, chunks in turns.items()}
        engine = Engine(model, max_len=160, decode=decode if slots else "dynamic")
        rows = engine.run(prompts, SamplingParams(max_new_tokens=6), group_size=group_size, slots=slots,
                          on_turn_end=lambda r, row: pending[r].pop() if pending[r] else None)
        return rows, engine.steps

    (alone, all_steps), (queued, steps) = run(None), run(slots)
    assert all_steps[0] == 4 * group_size and max(steps) == slots == steps[0]
    for a, b in zip(alone, queued):
        assert (a.ids, a.mask, a.turns, a.finish_reason) == (b.ids, b.mask, b.turns, b.finish_reason)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    if forced:  # while groups wait, fewer than a group's slots are ever free
        last_admission = max(i for i in range(1, len(steps)) if steps[i] > steps[i - 1])
        assert all(n > slots - group_size for n in steps[:last_admission])
