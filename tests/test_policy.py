"""Prefix-shared teacher forcing equals G independent full-sequence passes, in values and in gradients."""

import torch

from agenticrec.model import Qwen3, Qwen3Config
from agenticrec.policy import group_logprobs


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Qwen3(Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=12, tie_word_embeddings=True))


def full_logprobs(model, prompt, continuation, temperature):
    ids = torch.tensor([prompt + continuation])
    lp = model(ids[:, :-1], targets=ids[:, 1:], temperature=temperature)[0]
    return lp[len(prompt) - 1:]


def test_group_logprobs_equal_separate_passes_and_gradients_match():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 97, (37,), generator=g).tolist()
    continuations = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (5, 1, 12, 8)]
    weights = torch.randn(4, 12, generator=g)
    shared = group_logprobs(model, prompt, continuations, temperature=0.7)
    (shared * weights).sum().backward()
    grads_shared = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = 0
    for i, c in enumerate(continuations):
        lp = full_logprobs(model, prompt, c, 0.7)
        assert torch.allclose(shared[i, :len(c)], lp, atol=1e-5)
        assert torch.all(shared[i, len(c):] == 0)
        total = total + (lp * weights[i, :len(c)]).sum()
    total.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(grads_shared[n], p.grad, atol=1e-5), n


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny_model()
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 97, (20,), generator=g).tolist()
    continuations = [torch.randint(0, 97, (6,), generator=g).tolist() for _ in range(3)]
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.activation_checkpointing = flag
        group_logprobs(model, prompt, continuations).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_masked_scoring_equals_full_scoring_on_the_masked_positions():
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 97, (15,), generator=g).tolist()
    continuations = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (7, 4)]
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1], [1, 0, 1, 1, 0, 0, 0]], dtype=torch.float)
    full = group_logprobs(model, prompt, continuations)
    part = group_logprobs(model, prompt, continuations, mask=mask)
    assert torch.allclose(part[:, 1:][mask[:, 1:] > 0], full[:, 1:][mask[:, 1:] > 0], atol=1e-6)
    assert torch.all(part[:, 1:][mask[:, 1:] == 0] == 0)


def test_the_continuation_pass_never_holds_a_score_tensor():
    """Forward and backward over G continuations of Lc tokens after a P-token prompt, at a shape where the
    attention scores [G, H, Lc, P + Lc] (fp32) would dwarf everything else: the pass's peak stays far below
    one layer's scores, so no kernel on this path materialised them (the lower-right causal structure, no mask)."""
    from agenticrec.memtrace import allocation_peak
    torch.manual_seed(0)
    model = Qwen3(Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=32, num_key_value_heads=2, head_dim=4, tie_word_embeddings=True))
    G, P, Lc = 4, 600, 600
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, 97, (P,), generator=g).tolist()
    continuations = [torch.randint(0, 97, (Lc,), generator=g).tolist() for _ in range(G)]
    scores = G * 32 * (Lc - 1) * (P + Lc - 1) * 4  # one layer's, 367 MB
    with allocation_peak() as peak:
        group_logprobs(model, prompt, continuations).sum().backward()
    assert peak.bytes < scores / 4, (peak.bytes / 1e6, scores / 1e6)
