"""Quality metrics of code embeddings (any [n_codes, dim] table): the one implementation used by
``python -m recipes.medtok_quality`` and ``benchmarks/bench_medtok.py``.

- :func:`hierarchy_auc`: ROC-AUC of cosine similarity separating sibling pairs (same parent) from
  random pairs of the same system;
- :func:`parent_mrr`: for codes whose parent is in the table, MRR of the parent among every code
  of the same system (the code itself excluded);
- :func:`gem_pairs` + :func:`equivalence_mrr`: ICD-9-CM -> ICD-10-CM retrieval through the CMS GEM;
- :func:`relation_metrics`: held-out relation pairs (:class:`medtok_core.heldout.PairSplit`) scored
  zero-shot by cosine and by a logistic probe trained on the training pairs only, as ROC-AUC
  against sampled negatives of the same code sets and as filtered MRR.

Each task's metric is computed from an :class:`Observed` (per-query reciprocal ranks, or the
scores of positive and negative pairs), which :func:`paired_difference` resamples for a paired
bootstrap interval of the difference between two methods (:func:`seeded_paired_difference`: the
same over several trained models per method, one per training seed).

Ranks count ties half (mean rank among equal scores): quantised embeddings can be identical for
two codes, and counting a tie as a win would flatter them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

_KEY = 1 << 31  # pair (a, b) of code ids -> one int64 key a * _KEY + b


# Queries ranked per block: a [Q, C] score matrix over the whole vocabulary (14k ICD-9 queries x
# 98k ICD-10-CM codes) with its masks and temporaries took > 20 GB and was OOM-killed.
QUERY_BLOCK = 1024


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.as_tensor(x).float(), dim=-1)


def pair_keys(pairs: np.ndarray) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0] * _KEY + pairs[:, 1]


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def cosine_scores(emb: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    e = normalized(emb)
    p = torch.tensor(np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    return (e[p[:, 0]] * e[p[:, 1]]).sum(-1).numpy()


def ranks_of_best_true(scores: torch.Tensor, truth: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """Rank (1 = first) of the best-scored true candidate of each row of ``scores`` [Q, C].

    ``truth`` [Q, C] marks the true candidates; ``skip`` [Q, C] marks candidates left out of the
    ranking (the query itself, other known true pairs: the "filtered" setting). Ties count half."""
    scores = scores.float()
    skip = torch.zeros_like(truth) if skip is None else skip & ~truth
    best = scores.masked_fill(~truth, float("-inf")).max(1).values[:, None]
    others = ~truth & ~skip
    above = ((scores > best) & others).sum(1).float()
    ties = ((scores == best) & others).sum(1).float()
    return 1.0 + above + 0.5 * ties


@dataclass
class Observed:
    """What one method's metric on one task is computed from: the reciprocal rank of each query
    (``mrr``) or the scores of the positive and negative pairs (``roc_auc``). Every method of a
    run sees the same queries / pairs in the same order, which is what makes the bootstrap paired."""

    metric: str
    rr: np.ndarray | None = None
    pos: np.ndarray | None = None
    neg: np.ndarray | None = None

    @classmethod
    def from_ranks(cls, ranks: torch.Tensor) -> Observed:
        return cls("mrr", rr=(1.0 / ranks.float()).numpy().astype(np.float64))

    @property
    def value(self) -> float:
        if self.metric == "mrr":
            return float(self.rr.mean()) if len(self.rr) else float("nan")
        return roc_auc(self.pos, self.neg)

    def resampled(self, draws: tuple[np.ndarray, ...]) -> np.ndarray:
        """[R] metric values at resampled indices (``draws``: one [R, n] index array per sample,
        queries for MRR, positives then negatives for ROC-AUC)."""
        if self.metric == "mrr":
            return self.rr[draws[0]].mean(1)
        return _resampled_auc(self.pos, self.neg, *draws)

    def sizes(self) -> tuple[int, ...]:
        return (len(self.rr),) if self.metric == "mrr" else (len(self.pos), len(self.neg))


def _resampled_auc(pos: np.ndarray, neg: np.ndarray, pos_idx: np.ndarray, neg_idx: np.ndarray) -> np.ndarray:
    """ROC-AUC (ties half) of each resample: the share of resampled negatives below each resampled
    positive, from per-resample counts over the distinct score values (no per-resample sort)."""
    values, group = np.unique(np.r_[pos, neg], return_inverse=True)
    g_pos, g_neg = group[:len(pos)], group[len(pos):]
    r, n_groups = len(neg_idx), len(values)
    flat = (g_neg[neg_idx] + n_groups * np.arange(r)[:, None]).ravel()
    mass = np.bincount(flat, minlength=r * n_groups).reshape(r, n_groups).astype(np.float64)
    below = np.cumsum(mass, axis=1) - mass  # negatives strictly below each value
    frac = (below + 0.5 * mass) / neg_idx.shape[1]
    return np.take_along_axis(frac, g_pos[pos_idx], axis=1).mean(1)


def paired_difference(a: Observed, b: Observed, scale_b: float = 1.0, n_resamples: int = 1000,
                      confidence_level: float = 0.95, seed: int = 0) -> dict:
    """``a - scale_b * b`` with a percentile bootstrap interval, queries (or positive and negative
    pairs, each stratum on its own) drawn with replacement, the same draws for both methods."""
    return seeded_paired_difference([a], [b], scale_b, n_resamples, confidence_level, seed)


def seeded_paired_difference(a: list[Observed], b: list[Observed], scale_b: float = 1.0, n_resamples: int = 1000,
                             confidence_level: float = 0.95, seed: int = 0) -> dict:
    """Mean over training seeds of ``a`` minus ``scale_b`` x mean over seeds of ``b`` (one Observed per
    trained model, a method that does not train has one), with a two-level percentile bootstrap:
    each resample draws the queries / pairs (shared by every model of both methods: paired) and,
    for each method on its own, as many of its seeds with replacement, so the interval holds both
    the sampling of the test pairs and the spread of training. One seed each: the paired bootstrap
    of :func:`paired_difference`, draw for draw."""
    runs = [*a, *b]
    if len({(o.metric, o.sizes()) for o in runs}) != 1:
        raise ValueError("paired_difference needs the same metric over the same queries / pairs")
    diff = float(np.mean([o.value for o in a]) - scale_b * np.mean([o.value for o in b]))
    if min(a[0].sizes()) == 0:
        return {"difference": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    seed_rng = np.random.default_rng([seed, 1])  # its own stream: one seed each leaves the pair draws unchanged
    chunk = max(1, 2_000_000 // max(sum(a[0].sizes()), 1))  # bounded memory: chunk x n index arrays
    diffs = []
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        draws = tuple(rng.integers(0, n, size=(r, n)) for n in a[0].sizes())
        means = []
        for method in (a, b):
            values = np.stack([o.resampled(draws) for o in method])  # [seeds, r]
            if len(method) == 1:
                means.append(values[0])
                continue
            picked = seed_rng.integers(0, len(method), size=(r, len(method)))  # [r, seeds drawn]
            means.append(values[picked, np.arange(r)[:, None]].mean(1))
        diffs.append(means[0] - scale_b * means[1])
    tail = 100 * (1 - confidence_level) / 2
    low, high = np.percentile(np.concatenate(diffs), [tail, 100 - tail])
    return {"difference": diff, "low": float(low), "high": float(high)}


# ------------------------------------------------------------------------------------- hierarchy
def hierarchy_pairs(vocab: pd.DataFrame, n_random: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sibling pairs (up to 10 per parent, capped at ``n_random``) and random same-system pairs."""
    rng = np.random.default_rng(seed)
    key = vocab["system"].astype(str) + ":" + vocab["parent"].fillna("").astype(str)
    groups = pd.Series(np.arange(len(vocab))).groupby(key.to_numpy())
    pos = []
    for name, idx in groups:
        if name.endswith(":") or len(idx) < 2:
            continue
        a = rng.choice(idx.to_numpy(), size=min(len(idx), 10), replace=False)
        pos += list(zip(a, np.roll(a, 1), strict=True))
    pos = np.array(pos[:n_random], dtype=np.int64).reshape(-1, 2)
    systems = vocab["system"].to_numpy()
    neg = []
    for s in np.unique(systems):
        members = np.nonzero(systems == s)[0]
        k = max(1, int(n_random * len(members) / len(vocab)))
        neg.append(np.stack([rng.choice(members, k), rng.choice(members, k)], 1))
    neg = np.concatenate(neg)
    return pos, neg[neg[:, 0] != neg[:, 1]]


def hierarchy_observed(vocab: pd.DataFrame, emb: torch.Tensor, n_random: int, seed: int) -> Observed:
    pos, neg = hierarchy_pairs(vocab, n_random, seed)
    return Observed("roc_auc", pos=cosine_scores(emb, pos), neg=cosine_scores(emb, neg))


def hierarchy_auc(vocab: pd.DataFrame, emb: torch.Tensor, n_random: int, seed: int) -> dict:
    o = hierarchy_observed(vocab, emb, n_random, seed)
    return {"auc": o.value, "n_sibling_pairs": len(o.pos), "n_random_pairs": len(o.neg)}


def parent_mrr(vocab: pd.DataFrame, emb: torch.Tensor, max_queries: int, seed: int) -> dict:
    """MRR of each code's parent among all codes of its system (itself excluded)."""
    o = parent_observed(vocab, emb, max_queries, seed)
    return {"mrr": o.value, "n_queries": len(o.rr)}


def parent_observed(vocab: pd.DataFrame, emb: torch.Tensor, max_queries: int, seed: int) -> Observed:
    """Reciprocal rank of each code's parent among all codes of its system (itself excluded)."""
    systems = vocab["system"].astype(str).to_numpy()
    row = {(s, c): i for i, (s, c) in enumerate(zip(systems, vocab["code"].astype(str), strict=True))}
    parents = vocab["parent"].fillna("").astype(str).to_numpy()
    q = np.array([i for i in range(len(vocab)) if parents[i] and (systems[i], parents[i]) in row], dtype=np.int64)
    if len(q) > max_queries:
        q = np.sort(np.random.default_rng(seed).choice(q, max_queries, replace=False))
    e = normalized(emb)
    ranks = []
    for s in np.unique(systems[q]):
        cand = np.nonzero(systems == s)[0]
        pos = {int(c): j for j, c in enumerate(cand)}
        e_cand = e[cand].t()
        system_q = q[systems[q] == s]
        for start in range(0, len(system_q), QUERY_BLOCK):
            qs = system_q[start:start + QUERY_BLOCK]
            truth = torch.zeros(len(qs), len(cand), dtype=torch.bool)
            skip = torch.zeros_like(truth)
            truth[torch.arange(len(qs)), [pos[row[(s, parents[i])]] for i in qs]] = True
            skip[torch.arange(len(qs)), [pos[int(i)] for i in qs]] = True
            ranks.append(ranks_of_best_true(e[qs] @ e_cand, truth, skip))
    return Observed.from_ranks(torch.cat(ranks) if ranks else torch.zeros(0))


# ------------------------------------------------------------------------------------- GEM
def gem_pairs(tok, data_dir: str | None) -> np.ndarray:
    """(icd9 row, icd10cm row) pairs of a tokenizer's table from the CMS GEM, with ancestor fallback."""
    from commons.datadir import data_file
    from commons.errors import UserError

    gem = pd.read_csv(data_file("kg/gem_icd9_to_icd10cm.csv", data_dir), dtype=str)
    gem = gem[gem["no_map"] != "1"]

    def rows(system: str, codes: pd.Series) -> dict[str, int]:
        out = {}
        for c in codes.unique():
            try:
                out[c] = tok.resolve(f"{system}:{c}", warn=False).code_id
            except UserError:
                pass
        return out

    r9, r10 = rows("ICD9CM", gem["icd9cm"]), rows("ICD10CM", gem["icd10cm"])
    pairs = {(r9[a], r10[b]) for a, b in zip(gem["icd9cm"], gem["icd10cm"], strict=True) if a in r9 and b in r10}
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def equivalence_mrr(vocab: pd.DataFrame, emb: torch.Tensor, pairs: np.ndarray) -> dict:
    """MRR of the best-ranked GEM partner of each ICD-9-CM code among all ICD-10-CM codes."""
    if len(pairs) == 0:
        return {"mrr": float("nan"), "n_queries": 0}
    o = equivalence_observed(vocab, emb, pairs)
    return {"mrr": o.value, "hits@10": float((o.rr >= 0.1).mean()), "n_queries": len(o.rr),
            "n_targets": int((vocab["system"] == "ICD10CM").sum())}


def equivalence_observed(vocab: pd.DataFrame, emb: torch.Tensor, pairs: np.ndarray) -> Observed:
    """Reciprocal rank of the best-ranked GEM partner of each ICD-9-CM code among all ICD-10-CM codes."""
    if len(pairs) == 0:
        return Observed.from_ranks(torch.zeros(0))
    targets = np.nonzero((vocab["system"] == "ICD10CM").to_numpy())[0]
    return Observed.from_ranks(rank_pairs(normalized(emb), normalized(emb), pairs, targets))


def _mask(rows: np.ndarray, cols: np.ndarray, start: int, n_rows: int, n_cols: int) -> torch.Tensor:
    """Boolean [n_rows, n_cols] with the (row - start, col) entries of rows in [start, start + n_rows) set."""
    mask = torch.zeros(n_rows, n_cols, dtype=torch.bool)
    sel = (rows >= start) & (rows < start + n_rows)
    mask[rows[sel] - start, cols[sel]] = True
    return mask


def rank_pairs(q_emb: torch.Tensor, c_emb: torch.Tensor, pairs: np.ndarray, candidates: np.ndarray,
               known: np.ndarray | None = None, score=None) -> torch.Tensor:
    """Rank of the best true partner of each query (first column of ``pairs``) among
    ``candidates``; other ``known`` true pairs of a query are filtered out of its ranking.

    ``score(queries, candidates) -> [Q, C]`` defaults to the dot product of the two tables."""
    queries = np.unique(pairs[:, 0])
    qpos = pd.Index(queries)
    cpos = pd.Index(candidates)
    qi, ci = qpos.get_indexer(pairs[:, 0]), cpos.get_indexer(pairs[:, 1])
    true_q, true_c = qi[ci >= 0], ci[ci >= 0]
    skip_q, skip_c = [], []
    if known is not None and len(known):
        ki, kc = qpos.get_indexer(known[:, 0]), cpos.get_indexer(known[:, 1])
        m = (ki >= 0) & (kc >= 0)
        skip_q.append(ki[m])
        skip_c.append(kc[m])
    self_c = cpos.get_indexer(queries)
    skip_q.append(np.nonzero(self_c >= 0)[0])
    skip_c.append(self_c[self_c >= 0])
    skip_q, skip_c = np.concatenate(skip_q), np.concatenate(skip_c)
    cand = c_emb[torch.as_tensor(candidates)] if score is None else None
    ranks = []
    for start in range(0, len(queries), QUERY_BLOCK):
        block = queries[start:start + QUERY_BLOCK]
        truth = _mask(true_q, true_c, start, len(block), len(candidates))
        keep = truth.any(1)
        if not bool(keep.any()):
            continue
        skip = _mask(skip_q, skip_c, start, len(block), len(candidates))
        scores = score(block, candidates) if score is not None else q_emb[torch.as_tensor(block)] @ cand.t()
        ranks.append(ranks_of_best_true(scores[keep], truth[keep], skip[keep]))
    return torch.cat(ranks) if ranks else torch.zeros(0)


# ------------------------------------------------------------------------------------- relations
def sample_negatives(cand_a: np.ndarray, cand_b: np.ndarray, n: int, exclude: np.ndarray, seed: int,
                     symmetric: bool) -> np.ndarray:
    """``n`` random (a, b) pairs from the two candidate sets that are not in ``exclude`` (either
    order for symmetric relations) and not self-pairs."""
    rng = np.random.default_rng(seed)
    exclude = np.asarray(exclude, dtype=np.int64).reshape(-1, 2)
    bad = np.unique(np.concatenate([pair_keys(exclude), pair_keys(exclude[:, ::-1]) if symmetric else []]))
    out: list[np.ndarray] = []
    have = 0
    for _ in range(100):
        a, b = rng.choice(cand_a, 2 * n), rng.choice(cand_b, 2 * n)
        ok = (a != b) & ~np.isin(a * _KEY + b, bad)
        out.append(np.stack([a[ok], b[ok]], 1))
        have += int(ok.sum())
        if have >= n:
            break
    return np.concatenate(out)[:n] if out else np.zeros((0, 2), np.int64)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0, max_iter: int = 100, seed: int = 0) -> torch.Tensor:
    """L2-regularised logistic regression (sklearn, lbfgs); the weights (the intercept does not
    change any ranking)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # One BLAS thread: lbfgs often stops at max_iter, where the iterate depends on the summation
    # order of multi-threaded BLAS; with the thread count of the environment the probe scores
    # moved by up to 0.005 between runs (enough to flip near-ties between methods).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # A probe stopped at max_iter is still a valid, slightly more regularised probe.
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, y)
    return torch.as_tensor(lr.coef_[0], dtype=torch.float32)


@dataclass
class PairProbe:
    """Logistic regression on [cos(a, b), a * b, a, b] of unit-normalised embeddings, folded into
    ``score = sum(w_ab * a * b) + w_a . a + w_b . b`` so a whole score matrix is two matmuls.

    The cosine feature lets the probe keep the zero-shot ranking where the diagonal weights have
    no training signal (dimensions no training pair uses). Blocks are rescaled to unit-order
    entries (a * b by d, a and b by sqrt(d)) instead of standardising each feature: a feature
    that is nearly constant on the training pairs must not get a huge weight."""

    w_ab: torch.Tensor
    w_a: torch.Tensor
    w_b: torch.Tensor

    @staticmethod
    def features(e: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
        a, b = e[pairs[:, 0]], e[pairs[:, 1]]
        d = e.shape[1]
        return torch.cat([(a * b).sum(1, keepdim=True), d * a * b, d ** 0.5 * a, d ** 0.5 * b], 1).numpy()

    @classmethod
    def fit(cls, emb: torch.Tensor, pos: np.ndarray, neg: np.ndarray, c: float = 1.0, seed: int = 0,
            max_iter: int = 100) -> PairProbe:
        e = normalized(emb)
        x = np.concatenate([cls.features(e, pos), cls.features(e, neg)])
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        w = fit_logistic(x, y, c, max_iter, seed)
        d = e.shape[1]
        return cls(w[0] + d * w[1:d + 1], d ** 0.5 * w[d + 1:2 * d + 1], d ** 0.5 * w[2 * d + 1:])

    def score_pairs(self, emb: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
        e = normalized(emb)
        a, b = e[pairs[:, 0]], e[pairs[:, 1]]
        return ((a * b) @ self.w_ab + a @ self.w_a + b @ self.w_b).numpy()

    def score_matrix(self, emb: torch.Tensor):
        e = normalized(emb)

        def score(queries: np.ndarray, candidates: np.ndarray) -> torch.Tensor:
            q, c = e[torch.as_tensor(queries)], e[torch.as_tensor(candidates)]
            return (q * self.w_ab) @ c.t() + (q @ self.w_a)[:, None] + (c @ self.w_b)[None, :]
        return score


@dataclass
class RelationSample:
    """Fixed pairs of one held-out relation, shared by every method so all see the same task."""

    name: str
    symmetric: bool
    cand_a: np.ndarray
    cand_b: np.ndarray
    train_pos: np.ndarray
    train_neg: np.ndarray
    test_pos: np.ndarray
    test_neg: np.ndarray
    known: np.ndarray       # every true pair but the test ones (filtered out of MRR rankings)


def relation_sample(split, name: str, symmetric: bool, max_train: int, neg_per_pos: int,
                    seed: int) -> RelationSample:
    """Training pairs (capped) with as many negatives, test pairs with ``neg_per_pos`` negatives each;
    negatives avoid every true pair of the full graph, train and test negatives are disjoint."""
    all_pairs, test = split.all_pairs, split.test
    cand_a, cand_b = np.unique(all_pairs[:, 0]), np.unique(all_pairs[:, 1])
    if symmetric:
        cand_a = cand_b = np.union1d(cand_a, cand_b)
    rng = np.random.default_rng(seed)
    train = split.train
    if len(train) > max_train:
        train = train[np.sort(rng.choice(len(train), max_train, replace=False))]
    test_neg = sample_negatives(cand_a, cand_b, neg_per_pos * len(test), all_pairs, seed + 1, symmetric)
    train_neg = sample_negatives(cand_a, cand_b, len(train), np.concatenate([all_pairs, test_neg]), seed + 2,
                                 symmetric)
    known = all_pairs[~np.isin(pair_keys(all_pairs), pair_keys(test))]
    if symmetric:  # both orders, so a query on either side is filtered and trained alike
        known = np.concatenate([known, known[:, ::-1]])
        train, train_neg = np.concatenate([train, train[:, ::-1]]), np.concatenate([train_neg, train_neg[:, ::-1]])
    return RelationSample(name, symmetric, cand_a, cand_b, train, train_neg, test, test_neg, known)


def relation_metrics(emb: torch.Tensor, s: RelationSample, seed: int = 0) -> dict[str, float]:
    """Zero-shot cosine and probe: ROC-AUC (test positives vs test negatives) and filtered MRR
    (each test query's best held-out partner among all candidates of the other side)."""
    return {kind: o.value for kind, o in relation_observed(emb, s, seed).items()}


def relation_observed(emb: torch.Tensor, s: RelationSample, seed: int = 0) -> dict[str, Observed]:
    """:func:`relation_metrics` before the reduction to one number."""
    e = normalized(emb)
    out = {"auc_cosine": Observed("roc_auc", pos=cosine_scores(e, s.test_pos), neg=cosine_scores(e, s.test_neg)),
           "mrr_cosine": Observed.from_ranks(rank_pairs(e, e, s.test_pos, s.cand_b, s.known))}
    probe = PairProbe.fit(e, s.train_pos, s.train_neg, seed=seed)
    out["auc_probe"] = Observed("roc_auc", pos=probe.score_pairs(e, s.test_pos), neg=probe.score_pairs(e, s.test_neg))
    out["mrr_probe"] = Observed.from_ranks(rank_pairs(e, e, s.test_pos, s.cand_b, s.known,
                                                      score=probe.score_matrix(e)))
    return out


def codebook_usage(ids: torch.Tensor, weights: torch.Tensor, regions: dict[str, tuple[int, int]]) -> dict:
    """Utilisation (share of codes used) and perplexity of the weighted usage of each region."""
    out = {}
    for region, (lo, hi) in regions.items():
        sel = (ids >= lo) & (ids < hi)
        # |weight|: pursuit weights are signed projection coefficients
        counts = torch.zeros(hi - lo).index_add_(0, (ids[sel] - lo).long(), weights[sel].float().abs())
        p = counts[counts > 0] / counts.sum().clamp(min=1e-12)
        out[region] = {"size": hi - lo, "utilization": float((counts > 0).float().mean()),
                       "perplexity": float(torch.exp(-(p * p.log()).sum()))}
    return out
