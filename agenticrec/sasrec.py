"""SASRec (Kang & McAuley, ICDM 2018), written by hand: causal self-attention over a user's item sequence.

    h = LayerNorm(Blocks(E_item[seq] * sqrt(d) + E_pos[recency]))       Blocks: pre-LN causal attention + FFN
    score(user, item) = h_last . E_item[item]

Positions count back from the most recent item (recency 0 = last), so batches can be left-padded to their own
longest sequence. Trained on the TRAIN split only (``agenticrec.data.training_sequences``), next-item prediction at
every position with either BCE against one uniform negative per position (the paper's loss) or a sampled
softmax over shared negatives; early stopping on valid NDCG@10 over the fixed 20-candidate instances.
It backs the collaborative tools (item neighbours = cosine of item embeddings; user neighbours = cosine of
sequence embeddings) and is a baseline ranker.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from agenticrec.data import Dataset, Instance, temp_path, training_sequences
from agenticrec.reward import ndcg_at

log = logging.getLogger("agenticrec.sasrec")
CACHE = Path(os.environ.get("AGENTICREC_CACHE", Path.home() / ".cache" / "agenticrec"))


@dataclass(frozen=True)
class SASRecConfig:
    num_items: int
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 50  # most recent items a sequence keeps
    dropout: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "sampled_softmax"  # "sampled_softmax" | "bce" (one negative per position, the paper's)
    negatives: int = 128  # shared negatives per batch for sampled_softmax
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 3  # epochs without a valid NDCG@10 gain before stopping
    valid_instances: int = 2000  # valid instances scored after each epoch
    seed: int = 0


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.hidden, padding_idx=0)  # id + 1; 0 = padding
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.hidden, cfg.dropout,
                                                               activation="relu", batch_first=True, norm_first=True)
                                    for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("future_mask", torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool).triu(1),
                             persistent=False)
        with torch.no_grad():  # unit-scale inputs after the sqrt(d) factor; N(0, 1) rows gave logits of ~100
            for emb in (self.item_emb, self.pos_emb):
                emb.weight.normal_(0.0, cfg.hidden ** -0.5)
            self.item_emb.weight[0].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs [B, L] of item id + 1, left-padded with 0 -> hidden states [B, L, d]."""
        B, L = seqs.shape
        recency = torch.arange(L - 1, -1, -1, device=seqs.device)  # last column = recency 0
        x = self.item_emb(seqs) * math.sqrt(self.cfg.hidden) + self.pos_emb(recency)[None]
        x = self.dropout(x) * (seqs > 0)[..., None]
        causal = self.future_mask[-L:, -L:]  # True = masked
        for block in self.blocks:
            x = block(x, src_mask=causal) * (seqs > 0)[..., None]
        return self.norm(x)

    def user_embedding(self, histories: list[list[int]]) -> torch.Tensor:
        """[B, d]: the hidden state after each history's last item."""
        return self(pad_left(histories, self.cfg.max_len))[:, -1]

    def item_embeddings(self) -> torch.Tensor:
        """[num_items, d] (row i = item i)."""
        return self.item_emb.weight[1:]


def pad_left(sequences: list[list[int]], max_len: int) -> torch.Tensor:
    """Item ids -> [B, L] of id + 1, keeping the last max_len items and left-padding with 0."""
    sequences = [s[-max_len:] for s in sequences]
    width = max(1, max(map(len, sequences)))
    return torch.tensor([[0] * (width - len(s)) + [i + 1 for i in s] for s in sequences], dtype=torch.long)


@torch.no_grad()
def score_candidates(model: SASRec, instances: list[Instance], batch_size: int = 512) -> list[list[float]]:
    """SASRec's score of each candidate of each instance, from the instance's (<= 10 item) history."""
    model.eval()
    items = model.item_embeddings()
    out = []
    for start in range(0, len(instances), batch_size):
        chunk = instances[start:start + batch_size]
        users = model.user_embedding([x.history for x in chunk])  # [B, d]
        cands = items[torch.tensor([x.candidates for x in chunk])]  # [B, N, d]
        out.extend(torch.einsum("bd,bnd->bn", users, cands).tolist())
    return out


def valid_ndcg(model: SASRec, instances: list[Instance]) -> float:
    scores = score_candidates(model, instances)
    ranks = [1 + sum(s > row[x.candidates.index(x.target)] for s in row) for x, row in zip(instances, scores)]
    return float(np.mean([ndcg_at(r, 10) for r in ranks]))


def train_sasrec(data: Dataset, valid: list[Instance], cfg: SASRecConfig | None = None,
                 train_cfg: TrainConfig = TrainConfig()) -> tuple[SASRec, dict]:
    """Train on ``training_sequences(data)`` only; keep the epoch with the best valid NDCG@10."""
    torch.manual_seed(train_cfg.seed)
    rng = np.random.default_rng(train_cfg.seed)
    cfg = cfg or SASRecConfig(num_items=len(data.items))
    model = SASRec(cfg)
    sequences = [s[-(cfg.max_len + 1):] for s in training_sequences(data) if len(s) >= 2]
    valid = valid[:train_cfg.valid_instances]
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, betas=(0.9, 0.98))
    best, best_state, history, bad_epochs, start = -1.0, None, [], 0, time.perf_counter()
    for epoch in tqdm(range(train_cfg.epochs), desc=f"SASRec {data.name}", unit="epoch"):
        loss = _train_epoch(model, optimizer, sequences, rng, cfg, train_cfg)
        score = valid_ndcg(model, valid)
        history.append({"epoch": epoch, "loss": loss, "valid_ndcg10": score})
        if score > best:
            best, best_state, bad_epochs = score, copy.deepcopy(model.state_dict()), 0
        else:
            bad_epochs += 1
            if bad_epochs >= train_cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"best_valid_ndcg10": best, "epochs": history, "seconds": time.perf_counter() - start,
                   "train_sequences": len(sequences)}


def _train_epoch(model, optimizer, sequences, rng, cfg: SASRecConfig, train_cfg: TrainConfig) -> float:
    model.train()
    order = sorted(rng.permutation(len(sequences)).tolist(), key=lambda i: len(sequences[i]))  # similar lengths
    batches = [order[i:i + train_cfg.batch_size] for i in range(0, len(order), train_cfg.batch_size)]
    rng.shuffle(batches)
    total = 0.0
    for batch in batches:
        seqs = [sequences[i] for i in batch]
        inputs = pad_left([s[:-1] for s in seqs], cfg.max_len)
        targets = pad_left([s[1:] for s in seqs], cfg.max_len)  # id + 1, 0 where padded
        hidden = model(inputs)[targets > 0]  # [P, d]
        positives = targets[targets > 0]  # [P]
        loss = _loss(model, hidden, positives, rng, cfg, train_cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(sequences)


def _loss(model, hidden, positives, rng, cfg: SASRecConfig, train_cfg: TrainConfig) -> torch.Tensor:
    pos_logits = (hidden * model.item_emb(positives)).sum(-1)
    if train_cfg.loss == "bce":
        negatives = torch.from_numpy(rng.integers(1, cfg.num_items + 1, size=len(positives)))
        neg_logits = (hidden * model.item_emb(negatives)).sum(-1)
        return F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits)) + \
            F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits))
    if train_cfg.loss == "sampled_softmax":
        negatives = torch.from_numpy(rng.integers(1, cfg.num_items + 1, size=train_cfg.negatives))
        neg_logits = hidden @ model.item_emb(negatives).T  # [P, K]
        neg_logits = neg_logits.masked_fill(negatives[None] == positives[:, None], float("-inf"))
        logits = torch.cat([pos_logits[:, None], neg_logits], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    raise ValueError(f"unknown SASRec loss {train_cfg.loss!r} (bce | sampled_softmax)")


# --------------------------------------------------------------------------------------------------------------------
# Cache: one trained model per dataset, config and training data
# --------------------------------------------------------------------------------------------------------------------


def cache_key(data: Dataset, cfg: SASRecConfig, train_cfg: TrainConfig) -> str:
    digest = hashlib.sha256(json.dumps([asdict(cfg), asdict(train_cfg)]).encode())
    for seq in training_sequences(data):
        digest.update(np.asarray(seq, dtype=np.int64).tobytes() + b"|")
    return f"{data.name}-{digest.hexdigest()[:16]}"


def load_or_train(data: Dataset, valid: list[Instance], cfg: SASRecConfig | None = None,
                  train_cfg: TrainConfig = TrainConfig(), cache_dir: Path = CACHE) -> SASRec:
    """The cached SASRec for this dataset, config and training data, trained (and cached) when absent."""
    cfg = cfg or SASRecConfig(num_items=len(data.items))
    file = cache_dir / f"sasrec-{cache_key(data, cfg, train_cfg)}.safetensors"
    model = SASRec(cfg)
    if file.is_file():
        try:
            model.load_state_dict(load_file(file))
            return model.eval()
        except Exception as err:  # a corrupt cache entry is retrained, never trusted
            log.warning("%s: unreadable cache entry (%s); retraining", file, err)
    model, report = train_sasrec(data, valid, cfg, train_cfg)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(file)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"report": json.dumps(report)})
    tmp.replace(file)
    log.info("SASRec %s: best valid NDCG@10 %.4f after %d epochs, %.0fs", data.name, report["best_valid_ndcg10"],
             len(report["epochs"]), report["seconds"])
    return model
