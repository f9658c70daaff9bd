"""A minimal AMC (attention guided multi-modal correlation), written apart from `amc_data`'s model
so that its choices can be switched one at a time and compared with the package's.

It reads a prepared folder through the data half only (`load_prepared`); the whole world is held
in memory as tensors (worlds here are small). `RefConfig` names every choice the fidelity notes
ablate: the negatives, a shared word table for query words and keywords, keyword keys from a
projection, the attention's temperature, the initialisation, dropout, weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class RefConfig:
    kind: str = "amc"  # amc | visual | keyword | fusion
    intra: bool = True
    inter: bool = True
    dim: int = 64
    negatives: str = (
        "sampled"  # sampled (t per pair) | batch (every positive of the batch) | hardest
    )
    t: int = 8
    margin: float = 0.2
    shared_words: bool = False  # one embedding per word for query words and keywords
    key_projection: bool = False  # keyword keys = a linear map of the keyword embedding
    temperature: float = 1.0  # attention logits are divided by sqrt(d) * temperature
    init_std: float = 0.1
    dropout: float = 0.1
    weight_decay: float = 1e-4
    lr: float = 3e-3
    epochs: int = 8
    batch_size: int = 64
    seed: int = 0
    cosine_attention: float = 0.0  # > 0: logits are this times the cosine of guide and key
    learn_scale: bool = False  # the cosine attention's scale is learned (from cosine_attention)
    loss: str = "hinge"  # hinge | infonce (softmax over the batch's images, temperature tau)
    tau: float = 0.05
    unit_values: bool = False  # each region / keyword value scaled to unit length before pooling


class Tables:
    """The prepared folder as tensors: regions, padded keywords, padded query tokens, all in a
    word-id space where, with `shared`, a keyword and a query word that are the same string have
    the same id."""

    def __init__(self, prepared, shared: bool) -> None:
        self.prepared = prepared
        qv, kv = list(prepared.query_vocabulary), list(prepared.vocabulary)
        if shared:
            words = {w: i + 1 for i, w in enumerate(dict.fromkeys(qv + kv))}
        else:
            words = {("q", w): i + 1 for i, w in enumerate(qv)}
            words.update({("k", w): len(qv) + i + 1 for i, w in enumerate(kv)})
        key = (lambda side, w: w) if shared else (lambda side, w: (side, w))
        self.vocab_size = len(words) + 1
        qmap = np.array([0] + [words[key("q", w)] for w in qv], dtype=np.int64)
        kmap = np.array([0] + [words[key("k", w)] for w in kv], dtype=np.int64)
        self.regions = torch.from_numpy(np.asarray(prepared.features, dtype=np.float32))
        csr = prepared.keywords
        width = max(1, int(np.diff(csr.indptr).max()))
        ids = np.zeros((csr.shape[0], width), dtype=np.int64)
        counts = np.zeros((csr.shape[0], width), dtype=np.float32)
        for row in range(csr.shape[0]):
            lo, hi = csr.indptr[row], csr.indptr[row + 1]
            ids[row, : hi - lo] = kmap[csr.indices[lo:hi] + 1]
            counts[row, : hi - lo] = csr.data[lo:hi]
        self.keyword_ids, self.keyword_counts = torch.from_numpy(ids), torch.from_numpy(counts)
        self.keyword_raw = np.zeros_like(ids)  # prepared keyword id + 1, for attention truth
        for row in range(csr.shape[0]):
            lo, hi = csr.indptr[row], csr.indptr[row + 1]
            self.keyword_raw[row, : hi - lo] = csr.indices[lo:hi] + 1
        qids = prepared.queries["query_id"].to_numpy(np.int64)
        tokens = prepared.query_token_ids(qids)
        length = max(1, max(len(t) for t in tokens))
        padded = np.zeros((len(qids), length), dtype=np.int64)
        for i, t in enumerate(tokens):
            padded[i, : len(t)] = qmap[np.asarray(t, dtype=np.int64) + 1]
        self.query_tokens = torch.from_numpy(padded)
        self.query_row = {int(q): i for i, q in enumerate(qids)}

    def query(self, query_ids: np.ndarray) -> Tensor:
        return self.query_tokens[[self.query_row[int(q)] for q in query_ids]]

    def images(self, rows: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        rows = torch.as_tensor(rows)
        return self.regions[rows], self.keyword_ids[rows], self.keyword_counts[rows]


class RefAMC(nn.Module):
    def __init__(self, config: RefConfig, vocab_size: int, feature_dim: int) -> None:
        super().__init__()
        self.c = config
        d = config.dim
        self.words = nn.Embedding(vocab_size, d, padding_idx=0)
        if not config.shared_words:
            self.keywords = nn.Embedding(vocab_size, d, padding_idx=0)
        for table in (self.words, getattr(self, "keywords", None)):
            if table is not None:
                nn.init.normal_(table.weight, std=config.init_std)
                with torch.no_grad():
                    table.weight[0].zero_()
        self.norm = nn.LayerNorm(feature_dim)
        self.region_value = nn.Linear(feature_dim, d)
        self.region_key = nn.Linear(feature_dim, d)
        self.key_proj = nn.Linear(d, d, bias=False) if config.key_projection else None
        self.q_shared, self.q_visual = nn.Linear(d, d), nn.Linear(d, d)
        self.q_keyword = nn.Linear(d, d, bias=False)
        self.gate_prior, self.gate_probe = nn.Linear(d, 2), nn.Linear(d, d)
        self.drop = nn.Dropout(config.dropout)
        start = math.log(max(config.cosine_attention, 1e-6))
        self.log_scale = nn.Parameter(torch.tensor(start), requires_grad=config.learn_scale)

    def keyword_table(self) -> nn.Embedding:
        return self.words if self.c.shared_words else self.keywords

    def encode_query(self, tokens: Tensor) -> Tensor:
        mask = (tokens > 0).float()
        q = (self.words(tokens) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return self.drop(q)

    def logits(self, guide: Tensor, key: Tensor, scale: float) -> Tensor:
        """(B, M, T) attention logits of guides (B, d) over keys (S, M, T, d)."""
        if self.c.cosine_attention > 0:
            guide, key = F.normalize(guide, dim=-1), F.normalize(key, dim=-1)
            return self.log_scale.exp() * (guide[:, None, None] * key).sum(-1)
        return (guide[:, None, None] * key).sum(-1) / scale

    def pool(self, q: Tensor, regions: Tensor, kw: Tensor, counts: Tensor):
        """Scores (Q, N) of every query against every image (N, ...), and the weights."""
        return self.score(q, regions[None], kw[None], counts[None])

    def score(self, q: Tensor, regions: Tensor, kw: Tensor, counts: Tensor):
        """Scores (B, M) of queries (B, d) against images (B or 1, M, ...), and the weights."""
        c, scale = self.c, math.sqrt(self.c.dim) * self.c.temperature
        r = self.norm(regions)
        rv = self.region_value(r)  # (S, M, R, d)
        kv = self.keyword_table()(kw)  # (S, M, K, d)
        if c.unit_values:
            rv, kv = F.normalize(rv, dim=-1), F.normalize(kv, dim=-1)
        kmask = counts > 0
        b, m = q.shape[0], kw.shape[1]
        if c.kind == "amc" and c.intra:
            rl = self.logits(self.q_visual(q), self.region_key(r), scale)
            rw = torch.softmax(rl, -1)  # (B, M, R)
            key = self.key_proj(kv) if self.key_proj is not None else kv
            kl = self.logits(self.q_keyword(q), key, scale)
            kl = kl + torch.log(counts.clamp_min(1e-6))
            kl = kl.masked_fill(~kmask, -1e9)
            kw_w = torch.softmax(kl, -1) * kmask.any(-1, keepdim=True)  # (B, M, K)
        else:
            rw = torch.full(rv.shape[:3], 1.0 / rv.shape[2]).expand(b, m, -1)
            kw_w = (counts / counts.sum(-1, keepdim=True).clamp_min(1e-6)).expand(b, m, -1)
        v = F.normalize(self.drop((rw[..., None] * rv).sum(-2)), dim=-1)  # (B, M, d)
        k = F.normalize(self.drop((kw_w[..., None] * kv).sum(-2)), dim=-1)
        if c.kind == "visual":
            x, gate = v, None
        elif c.kind == "keyword":
            x, gate = k, None
        elif c.kind == "amc" and c.inter:
            probe = self.gate_probe(q)[:, None]  # (B, 1, d)
            prior = self.gate_prior(q)[:, None].expand(b, m, 2)
            logits = prior + torch.stack([(probe * v).sum(-1), (probe * k).sum(-1)], -1)
            has_kw = kmask.any(-1).expand(b, m)[..., None]
            logits = logits.masked_fill(~torch.cat([torch.ones_like(has_kw), has_kw], -1), -1e9)
            gate = torch.softmax(logits, -1)
            x = gate[..., :1] * v + gate[..., 1:] * k
        else:
            x, gate = 0.5 * v + 0.5 * k, None
        qm = F.normalize(self.q_shared(q), dim=-1)
        scores = (qm[:, None] * F.normalize(x, dim=-1)).sum(-1)
        return scores, rw, kw_w, gate


def loss_of(config: RefConfig, model: RefAMC, tables: Tables, qids, pos_rows, neg_rows, same):
    """Hinge ranking loss of one batch. `same` (B, B) bool: row j's positive is no negative of
    query i (same image or one of query i's positives)."""
    q = model.encode_query(tables.query(qids))
    if config.negatives == "sampled":
        rows = np.concatenate([pos_rows[:, None], neg_rows], 1)  # (B, 1 + t)
        regions, kw, counts = tables.images(rows.reshape(-1))
        b, m = rows.shape
        s, *_ = model.score(q, *(t.view(b, m, *t.shape[1:]) for t in (regions, kw, counts)))
        if config.loss == "infonce":
            return F.cross_entropy(s / config.tau, torch.zeros(b, dtype=torch.long))
        return (config.margin - s[:, :1] + s[:, 1:]).clamp(min=0).mean()
    regions, kw, counts = tables.images(pos_rows)
    s, *_ = model.pool(q, regions, kw, counts)  # (B, B)
    positive = s.diagonal()[:, None]
    hinge = (config.margin - positive + s).clamp(min=0).masked_fill(torch.as_tensor(same), 0)
    if config.loss == "infonce":
        logits = (s / config.tau).masked_fill(
            torch.as_tensor(same) & ~torch.eye(len(s), dtype=torch.bool), -1e9
        )
        return F.cross_entropy(logits, torch.arange(len(s)))
    if config.negatives == "hardest":
        return hinge.max(1).values.mean()
    return hinge.sum(1).mean()


def _positives(prepared, split: str) -> tuple[np.ndarray, np.ndarray, dict[int, set[int]]]:
    """(query ids, positive rows) of every judged pair with label > 0, and each query's rows."""
    queries = set(prepared.split_queries(split)["query_id"].tolist())
    j = prepared.judgments
    j = j[(j["label"] > 0) & j["query_id"].isin(queries)]
    qids = j["query_id"].to_numpy(np.int64)
    rows = prepared.rows(j["img_id"].to_numpy(np.int64))
    own: dict[int, set[int]] = {}
    for q, r in zip(qids.tolist(), rows.tolist(), strict=True):
        own.setdefault(q, set()).add(r)
    return qids, rows, own


def fit(config: RefConfig, prepared, validate) -> tuple[RefAMC, Tables, list[float]]:
    """Train; keep the weights of the epoch with the best `validate(model, tables)`."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tables = Tables(prepared, config.shared_words)
    model = RefAMC(config, tables.vocab_size, tables.regions.shape[-1])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    qids, rows, own = _positives(prepared, "train")
    pool = prepared.rows(prepared.split_images("train"))
    steps = config.epochs * math.ceil(len(qids) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=steps, pct_start=0.05, anneal_strategy="cos"
    )
    best, best_state, history = -1.0, None, []
    for _ in range(config.epochs):
        model.train()
        order = rng.permutation(len(qids))
        for start in range(0, len(order), config.batch_size):
            pick = order[start : start + config.batch_size]
            q, p = qids[pick], rows[pick]
            negatives = pool[rng.integers(pool.size, size=(len(pick), config.t))]
            same = np.array([[int(r) in own[int(qi)] for r in p] for qi in q])
            np.fill_diagonal(same, True)
            loss = loss_of(config, model, tables, q, p, negatives, same)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        model.eval()
        value = validate(model, tables)
        history.append(value)
        if value > best:
            best = value
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, tables, history
