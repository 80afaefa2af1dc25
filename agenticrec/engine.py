"""KV-cached batched generation over token ids (knows nothing about recommendation).

The picture (docs/engine.md has the long version):

    rows ──prefill──> KVCache [B, H_kv, S, D] per layer, slot j of a row = the token at position j
      │
      └─ loop: sample one token per active row from its next-token logits
               ├─ no stop yet ............. feed that token (decode step)
               ├─ stopped (EOS / stop sequence / per-turn budget)
               │     on_turn_end(row) -> forced ids ... feed token + forced ids (a tool response), new turn
               │                      -> None ......... row finished
               └─ context limit reached ............. row finished, reason "context"
               finished rows are compacted out of the cache, so they cost nothing afterwards, and
               the next queued prompt's group takes their slots (continuous batching)

Every row carries its ids, a loss mask (1 = sampled by the policy, 0 = prompt or forced) and the log-prob of each
sampled token under the sampling temperature, built as the tokens are produced — never inferred from ids later.
The G rollouts of one prompt share its prefill: the prompt is encoded once and its cache rows copied G times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from agenticrec.model import Qwen3

PREFILL_TOKEN_BUDGET = 4096  # padded tokens per prefill or forced-chunk forward: bounds activations and padding
DECODE_MODES = ("dynamic", "static", "compiled")


@dataclass(frozen=True)
class SamplingParams:
    """How each turn is decoded and when it stops."""

    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter
    max_new_tokens: int = 256  # per turn
    stop_token_ids: tuple[int, ...] = ()  # e.g. <|im_end|>: the turn stops after sampling one
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # e.g. the ids of </tool_call>: stop after the last one

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(f"invalid sampling parameters: {self}")


@dataclass
class Row:
    """One sequence being generated: nanochat's per-row state, plus the turn bookkeeping the agent needs."""

    ids: list[int]
    mask: list[int]  # 1 = sampled by the policy (trained on), 0 = prompt / forced tokens (never trained on)
    logprobs: list[float]  # log pi(token) at the sampling temperature for sampled tokens, 0.0 for the rest
    prompt_len: int
    turn_start: int  # index in ids where the current turn's sampled tokens begin
    stop_reason: str | None = None  # why the last turn ended: "stop_token" | "stop_sequence" | "max_new_tokens"
    finish_reason: str | None = None  # None while running; "done" (on_turn_end said so) | "context"
    turns: int = 0

    @property
    def turn_ids(self) -> list[int]:
        return self.ids[self.turn_start:]

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.prompt_len:]


# on_turn_end(row_index, row) -> ids to force before the next turn, or None to finish the row
TurnHandler = Callable[[int, Row], "list[int] | None"]


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token occupies in the cache, over all layers."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype.itemsize


class KVCache:
    """Keys and values, one [rows, H_kv, S, D] tensor per layer each (``k[layer]``), allocated ONCE per engine
    call at the context limit: slot j of a row holds position j. A tensor per layer, not views of one: under
    ``torch.compile`` a write into a view of one big tensor becomes a copy of all of it.

    Nothing ever reallocates it: there is no growth (S = max_len from the start; the engine's byte budget sizes
    the calls so that this fits), and compaction and prefix sharing move rows inside the tensor (``move_rows``),
    so a call never holds two caches. ``rows`` selects which rows the next forward reads and writes (None = the
    first R, in order, without copies); the engine sets it before each forward.
    """

    def __init__(self, model: Qwen3, rows: int, max_len: int):
        cfg, p = model.config, next(model.parameters())
        shape = (rows, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.rows: torch.Tensor | None = None
        self.filled = 0  # slots 0..filled-1 hold data in some row: what moving a row has to copy

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def move_rows(self, index: list[int]) -> None:
        """Row i becomes old row index[i], in place: dropping rows (every index[i] >= i, copied upwards in order)
        or repeating them (every index[i] <= i, copied in reverse order); each copy reads a row not yet written."""
        if all(src >= i for i, src in enumerate(index)):
            order = range(len(index))
        elif all(src <= i for i, src in enumerate(index)):
            order = reversed(range(len(index)))
        else:
            raise ValueError(f"move_rows needs a monotone row map, got {index[:8]}...")
        used = slice(0, self.filled)
        for i in order:
            if index[i] != i:
                for layer in self.k + self.v:
                    layer[i, :, used].copy_(layer[index[i], :, used])

    def update(self, layer_idx: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        k_buf, v_buf = self.k[layer_idx], self.v[layer_idx]
        self.filled = max(self.filled, kv_len)
        rows = self.rows if self.rows is not None else torch.arange(k.shape[0], device=k.device)
        k_buf[rows[:, None], :, positions] = k.transpose(1, 2)  # [R, T, H_kv, D] into slots positions[r, t]
        v_buf[rows[:, None], :, positions] = v.transpose(1, 2)
        if self.rows is None:
            return k_buf[:len(rows), :, :kv_len], v_buf[:len(rows), :, :kv_len]  # views: no copy when decoding
        return k_buf[rows, :, :kv_len], v_buf[rows, :, :kv_len]


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None):
    """tokens [B], logprobs [B] from next-token logits [B, V].

    The log-prob is log_softmax(logits / T) of the chosen token (T = 1 when greedy): the full tempered
    distribution, which is what the trainer recomputes. top-k / top-p only restrict which tokens can be drawn.
    """
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    scaled = logits / params.temperature
    logprobs = scaled.log_softmax(-1)
    filtered = filter_top_k_top_p(scaled, params.top_k, params.top_p)
    tokens = torch.multinomial(filtered.softmax(-1), 1, generator=generator)[:, 0]
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability reaches top_p."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep a token if the mass before it < p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Engine:
    """Batched multi-turn generation with a KV cache. ``max_len``: the context limit of every row (prompt and
    all turns and forced tokens together); a row that reaches it finishes with reason "context".

    ``kv_budget``: bytes the cache of one call may take (None = unbounded). Every row is allocated at
    ``max_len``, so the cache holds at most ``max_rows`` rows (slots); a call with more rows queues them, group
    by group, and each group takes the slots that finished rows free (continuous batching). A group larger than
    the cache is an error, never an out-of-memory halfway through. ``model`` may be replaced (or set to None)
    between calls. ``steps`` records the rows of every decode step of the last call (slot occupancy).

    ``decode``: how a step that feeds one token per row runs. "dynamic": over the active rows and the used slots
    (shapes follow the data). "static": over every slot of the cache and all its positions, each row masked to
    its own length (``StaticDecode``): the same shapes at every step of a call. "compiled": that step under
    ``torch.compile`` (inductor's C++ backend on CPU), compiled once per slot count. On CUDA both fixed-shape
    steps are captured as a CUDA graph once per call and replayed."""

    def __init__(self, model: Qwen3, max_len: int, kv_budget: int | None = None, decode: str = "dynamic"):
        if decode not in DECODE_MODES:
            raise ValueError(f"decode {decode!r}: expected one of {', '.join(DECODE_MODES)}")
        self.model, self.max_len, self.kv_budget, self.decode = model, max_len, kv_budget, decode
        self.device = next(model.parameters()).device
        self.static = None if decode == "dynamic" else \
            StaticDecode(compiled=decode == "compiled", graphed=self.device.type == "cuda")
        self.dtype = next(model.parameters()).dtype
        self.row_bytes = max_len * kv_bytes_per_token(model.config, self.dtype)
        if kv_budget is not None and kv_budget < self.row_bytes:
            raise ValueError(f"a KV budget of {kv_budget / 1e9:.3f} GB holds no row of {max_len} tokens "
                             f"({self.row_bytes / 1e9:.3f} GB each)")
        self.cache: KVCache | None = None
        self.steps: list[int] = []

    @property
    def max_rows(self) -> int | None:
        """The most rows (prompts x group size) one call may hold within the byte budget."""
        return None if self.kv_budget is None else self.kv_budget // self.row_bytes

    @torch.no_grad()
    def run(self, prompts: Sequence[Sequence[int]], params: SamplingParams, on_turn_end: TurnHandler | None = None,
            group_size: int = 1, seed: int | None = None, slots: int | None = None) -> list[Row]:
        """Generate for ``prompts`` x ``group_size`` rows (row p * group_size + g is sample g of prompt p).

        Without ``on_turn_end`` every row finishes at its first stop (plain generation). ``slots``: rows the cache
        holds (default: every row, or ``max_rows`` under the budget); fewer slots than rows queue the prompts.
        """
        total = len(prompts) * group_size
        limit = total if self.max_rows is None else self.max_rows
        slots = min(total, slots or limit)
        budget = "" if self.max_rows is None else \
            f"the KV budget of {self.kv_budget / 1e9:.3f} GB holds {self.max_rows} rows of {self.max_len} tokens"
        if slots > limit:
            raise ValueError(f"{slots} slots: {budget}")
        if slots < group_size:
            raise ValueError(f"a group of {group_size} rows does not fit in {slots} slots" + (budget and f" ({budget})"))
        too_long = [i for i, p in enumerate(prompts) if not 0 < len(p) < self.max_len]
        if too_long:
            raise ValueError(f"prompt(s) {too_long[:5]} are empty or do not fit max_len={self.max_len} "
                             f"(lengths {[len(prompts[i]) for i in too_long[:5]]})")
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        rows = [Row(list(p), [0] * len(p), [0.0] * len(p), len(p), len(p)) for p in prompts for _ in range(group_size)]
        try:
            self._loop(rows, prompts, params, on_turn_end, group_size, generator, slots)
        finally:
            self.cache = None  # the cache lives for one call only
            if self.static is not None:
                self.static.release()
        return rows

    def _loop(self, rows, prompts, params, on_turn_end, group_size, generator, slots: int) -> None:
        self.start(slots)
        queue = deque(range(len(prompts)))
        active: list[int] = []  # active[i] = index in rows of cache row i
        logits = torch.empty(0, self.model.config.vocab_size, device=self.device)
        self.steps = []
        while active or queue:
            admitted = [queue.popleft() for _ in range(min(len(queue), (slots - len(active)) // group_size))]
            if admitted:  # whole groups, into the slots finished rows freed (all of them on the first step)
                logits = torch.cat([logits, self.admit([prompts[p] for p in admitted], group_size)])
                active += [p * group_size + g for p in admitted for g in range(group_size)]
            self.steps.append(len(active))
            tokens, logprobs = sample(logits, params, generator)
            pending = [self._advance(rows, r, t, lp, params, on_turn_end)
                       for r, t, lp in zip(active, tokens.tolist(), logprobs.tolist())]
            keep = [i for i, chunk in enumerate(pending) if chunk]
            if len(keep) < len(active):  # compact: finished rows stop costing compute
                active, pending = [active[i] for i in keep], [pending[i] for i in keep]
                self.keep(keep)
            logits = self.feed(pending) if active else logits[:0]  # the logits of exactly the active rows

    def _advance(self, rows: list[Row], r: int, token: int, logprob: float, params: SamplingParams,
                 on_turn_end: TurnHandler | None) -> list[int]:
        """Append one sampled token to row r and decide what the row feeds next ([] = finished)."""
        row = rows[r]
        row.ids.append(token)
        row.mask.append(1)
        row.logprobs.append(logprob)
        row.stop_reason = self._stop_reason(row, params)
        if row.stop_reason is None:
            if len(row.ids) >= self.max_len:
                row.finish_reason = "context"
                return []
            return [token]
        row.turns += 1
        forced = on_turn_end(r, row) if on_turn_end is not None else None
        if forced is None:
            row.finish_reason = "done"
            return []
        if len(row.ids) + len(forced) >= self.max_len:  # no room to append the forced ids and sample after them
            row.finish_reason = "context"
            return []
        row.ids.extend(forced)
        row.mask.extend([0] * len(forced))
        row.logprobs.extend([0.0] * len(forced))
        row.turn_start = len(row.ids)
        return [token, *forced]

    @staticmethod
    def _stop_reason(row: Row, params: SamplingParams) -> str | None:
        turn_len = len(row.ids) - row.turn_start  # no slicing: this runs once per sampled token
        if row.ids[-1] in params.stop_token_ids:
            return "stop_token"
        if any(turn_len >= len(s) and tuple(row.ids[-len(s):]) == s for s in params.stop_sequences):
            return "stop_sequence"
        if turn_len >= params.max_new_tokens:
            return "max_new_tokens"
        return None

    # The three cache operations below are public so tests can check cached logits against recomputation.

    def keep(self, index: list[int]) -> None:
        """Cache row i becomes old row index[i] (drop finished rows, or repeat rows for prefix sharing), in place."""
        self.cache.move_rows(index)
        self.lens = self.lens[torch.tensor(index, dtype=torch.long, device=self.device)]

    def start(self, slots: int) -> None:
        """A fresh, empty cache of ``slots`` rows (the previous call's goes first)."""
        self.cache = None
        self.cache = KVCache(self.model, slots, self.max_len)
        self.lens = torch.zeros(0, dtype=torch.long, device=self.device)  # tokens cached per used row

    def admit(self, prompts: Sequence[Sequence[int]], group_size: int = 1) -> torch.Tensor:
        """Prompts into the rows after the used ones, each prefilled once and its row repeated ``group_size``
        times (prefix sharing); the next-token logits of every new row, [P * group_size, V]."""
        used = len(self.lens)
        logits = self.append(prompts)
        if group_size > 1:
            self.keep(list(range(used)) + [used + p for p in range(len(prompts)) for _ in range(group_size)])
            logits = logits.repeat_interleave(group_size, dim=0)
        return logits

    def prefill(self, prompts: Sequence[Sequence[int]], rows: int | None = None) -> torch.Tensor:
        """Start a fresh cache of ``rows`` rows (default one per prompt) with prompt i in row i; return the
        next-token logits [P, V] after each prompt."""
        self.start(rows or len(prompts))
        return self.append(prompts)

    def append(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prompt i into row used + i; the next-token logits [P, V] after each. Prompts are encoded in
        length-sorted groups of at most PREFILL_TOKEN_BUDGET padded tokens (``token_budget_groups``), so short
        prompts are not padded to the longest one."""
        used = len(self.lens)
        self.lens = torch.cat([self.lens, self.lens.new_zeros(len(prompts))])
        logits = torch.empty(len(prompts), self.model.config.vocab_size, device=self.device)
        for group in token_budget_groups([len(p) for p in prompts]):
            logits[torch.tensor(group, device=self.device)] = self._forward(
                torch.tensor([used + i for i in group], device=self.device), [list(prompts[i]) for i in group]).float()
        return logits

    def feed(self, pending: list[list[int]]) -> torch.Tensor:
        """Feed each cache row its pending ids (>= 1 each); return next-token logits [A, V]. Rows that only feed
        their last sampled token share one decode forward; rows that also feed forced ids go through further
        forwards, in length-sorted groups of at most PREFILL_TOKEN_BUDGET padded tokens (as prefill)."""
        chunk = [i for i, ids in enumerate(pending) if len(ids) > 1]
        if not chunk and self.static is not None:
            logits = self.static(self.model, self.cache, self.lens, [ids[0] for ids in pending])
            self.lens += 1
            return logits.float()
        if not chunk:
            return self._forward(None, pending).float()
        single = [i for i, ids in enumerate(pending) if len(ids) == 1]
        groups = token_budget_groups([len(pending[i]) for i in chunk])
        logits = torch.empty(len(pending), self.model.config.vocab_size, device=self.device)
        for group in [[chunk[j] for j in g] for g in groups] + ([single] if single else []):
            index = torch.tensor(group, device=self.device)
            logits[index] = self._forward(index, [pending[i] for i in group]).float()
        return logits

    def _forward(self, rows: torch.Tensor | None, chunks: list[list[int]]) -> torch.Tensor:
        """One model forward over cache rows ``rows`` (None = all), each appending its chunk of ids (ragged,
        right-padded). Returns the logits after each chunk's last real token, [R, V]."""
        lengths = torch.tensor([len(c) for c in chunks], device=self.device)
        width = int(lengths.max())
        ids = torch.tensor([c + [0] * (width - len(c)) for c in chunks], device=self.device)
        starts = self.lens if rows is None else self.lens[rows]
        # padding past the context limit goes to the last slot, which no real token uses (rows end before it)
        positions = (starts[:, None] + torch.arange(width, device=self.device)).clamp(max=self.max_len - 1)
        self.cache.rows = rows
        logits = self.model(ids, positions, self.cache, last_index=lengths - 1)  # [R, V]
        if rows is None:
            self.lens += lengths
        else:
            self.lens[rows] += lengths
        return logits


class StaticDecode:
    """One decode step at fixed shapes: every slot of the cache feeds a token (rows past the active ones feed a
    dummy one into the last slot, which no real token uses) and attends over all ``max_len`` positions, masked
    to its own length; no shape, and no Python branch, depends on the data, so ``torch.compile`` traces it once
    per slot count. It reads more than the dynamic step (all slots and positions), which the fixed shapes must
    win back in per-step overhead.

    On CUDA the step is captured as a CUDA graph once per engine call (``capture``: the call's cache is new, and
    a graph replays fixed addresses) and replayed at every step: one launch instead of one per kernel. The graph
    is ours, not ``torch.compile``'s ``reduce-overhead``: that mode skips graphs whose inputs are mutated (the
    cache is) unless their addresses never change across calls, and a cache that lived across calls would hold
    its memory through the update."""

    def __init__(self, compiled: bool, graphed: bool = False):
        self.step = torch.compile(self._step, fullgraph=True, dynamic=False) if compiled else self._step
        self.graphed = graphed
        self.graph: CapturedStep | None = None

    def __call__(self, model: Qwen3, cache: KVCache, lens: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """Next-token logits [A, V] of the A active rows (cache rows 0..A-1, ``lens`` tokens cached each)."""
        slots, active = len(cache.k[0]), len(tokens)
        ids = torch.zeros(slots, 1, dtype=torch.long, device=lens.device)
        ids[:active, 0] = torch.tensor(tokens, device=lens.device)
        positions = torch.full((slots, 1), cache.capacity - 1, dtype=torch.long, device=lens.device)
        positions[:active, 0] = lens
        cache.filled = max(cache.filled, int(lens.max()) + 1)
        if not self.graphed:
            return self.step(model, ids, positions, cache.k, cache.v)[:active]
        if self.graph is None or self.graph.cache is not cache:
            self.graph = self.capture(model, cache)
        self.graph.ids.copy_(ids)
        self.graph.positions.copy_(positions)
        self.graph.graph.replay()
        return self.graph.logits[:active].clone()  # the next replay overwrites the graph's output

    def capture(self, model: Qwen3, cache: KVCache) -> CapturedStep:
        """The step as a CUDA graph over ``cache`` and static input buffers. The warm-up runs (which compile,
        and write into the cache) feed every slot a dummy token at the last position, which no real token uses."""
        self.graph = None  # the previous call's graph (and the cache it holds) goes first
        slots = len(cache.k[0])
        ids = torch.zeros(slots, 1, dtype=torch.long, device=cache.k[0].device)
        positions = torch.full_like(ids, cache.capacity - 1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, on a side stream (as torch.cuda.graph asks)
            for _ in range(2):
                self.step(model, ids, positions, cache.k, cache.v)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.step(model, ids, positions, cache.k, cache.v)
        return CapturedStep(cache, graph, ids, positions, logits)

    def release(self) -> None:
        """Drop the captured graph, its memory pool and the cache it refers to (at the end of each call)."""
        self.graph = None

    @staticmethod
    def _step(model, ids, positions, k_layers, v_layers):
        writer = SlotWriter(k_layers, v_layers)
        return model(ids, positions, writer, last_index=torch.zeros_like(ids[:, 0]))


@dataclass
class CapturedStep:
    """A captured decode step: replaying ``graph`` reads ``ids`` / ``positions`` and writes ``logits``, all at
    fixed addresses, and writes into ``cache``."""
    cache: KVCache
    graph: "torch.cuda.CUDAGraph"
    ids: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor


class SlotWriter:
    """The cache protocol of the fixed-shape step: write each row's token at its position, in place (one tensor
    per layer: ``torch.compile`` turns writes into views of one big tensor into copies of it), and return every
    slot; ``static_len`` tells attention to read them all, masked per row."""

    def __init__(self, k_layers: list[torch.Tensor], v_layers: list[torch.Tensor]):
        self.k, self.v, self.static_len = k_layers, v_layers, k_layers[0].shape[2]

    def update(self, layer_idx, positions, k, v, kv_len):
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k[layer_idx][rows, :, positions] = k.transpose(1, 2)
        self.v[layer_idx][rows, :, positions] = v.transpose(1, 2)
        return self.k[layer_idx], self.v[layer_idx]


def token_budget_groups(lengths: list[int], budget: int | None = None) -> list[list[int]]:
    """Indices into ``lengths`` in length-sorted groups whose padded size (members x longest) is at most
    ``budget`` (default PREFILL_TOKEN_BUDGET; a longer single sequence forms its own group): what bounds one
    forward's activations."""
    budget = budget or PREFILL_TOKEN_BUDGET
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * lengths[order[end]] <= budget:
            end += 1
        groups.append(order[start:end])
        start = end
    return groups


def generate(model: Qwen3, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop_token_ids: Sequence[int] = (), seed: int | None = None,
             decode: str = "dynamic") -> list[list[int]]:
    """The new tokens of each prompt (the stopping token included): one turn, no tools."""
    params = SamplingParams(temperature, top_k, top_p, max_new_tokens, tuple(stop_token_ids))
    engine = Engine(model, max_len=max(len(p) for p in prompts) + max_new_tokens + 1, decode=decode)
    return [row.new_ids for row in engine.run(prompts, params, seed=seed)]
