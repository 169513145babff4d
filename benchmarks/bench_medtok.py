"""Quality and speed of MedTok artifacts.

    python benchmarks/bench_medtok.py --artifacts both=runs/medtok_quick/artifact,text=runs/medtok_quick_text/artifact \
        --output runs/bench_medtok.json

Quality (per artifact):
- codebook utilisation and perplexity per region, over the exported token table;
- hierarchy preservation: ROC-AUC of cosine similarity separating sibling pairs (same parent)
  from random pairs of the same system;
- cross-system equivalence: for ICD-9-CM codes with a GEM partner in ICD-10-CM
  (data_file("kg/gem_icd9_to_icd10cm.csv"), both sides mapped to the artifact's codes with the
  tokenizer's ancestor fallback), MRR of the best-ranked true partner among all ICD-10-CM codes.
- the same two metrics for the frozen MiniLM description embeddings (``--raw_text true``), as a
  reference point.
Speed (first artifact): single-code ``embed`` latency, batched ``encode``/``embed`` throughput,
full-model ``encode_new`` throughput, and the training throughput/time from the run's summary.json.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medtok_core.config import parse_config  # noqa: E402
from medtok_core.errors import MedTokError, cli_entry  # noqa: E402
from medtok_core.io import write_json  # noqa: E402
from medtok_core.tokenizer import MedTokTokenizer  # noqa: E402


@dataclass
class BenchConfig:
    """Benchmark MedTok artifacts (name=path, comma-separated)."""

    artifacts: list[str]
    output: str = "runs/bench_medtok.json"
    data_dir: str | None = None
    n_random_pairs: int = 20000
    raw_text: bool = True
    speed: bool = True
    seed: int = 0
    # Torch CPU threads; 1 measured far faster than 2 for these small ops on a shared 2-core box.
    num_threads: int = 1


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def hierarchy_auc(vocab: pd.DataFrame, emb: torch.Tensor, n_random: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    key = vocab["system"] + ":" + vocab["parent"]
    groups = pd.Series(np.arange(len(vocab))).groupby(key.to_numpy())
    pos = []
    for name, idx in groups:
        if name.endswith(":") or len(idx) < 2:
            continue
        idx = idx.to_numpy()
        a = rng.choice(idx, size=min(len(idx), 10), replace=False)
        b = np.roll(a, 1)
        pos += list(zip(a, b, strict=True))
    pos = np.array(pos[: n_random])
    systems = vocab["system"].to_numpy()
    neg = []
    for s in np.unique(systems):
        members = np.nonzero(systems == s)[0]
        k = max(1, int(n_random * len(members) / len(vocab)))
        neg.append(np.stack([rng.choice(members, k), rng.choice(members, k)], 1))
    neg = np.concatenate(neg)
    neg = neg[neg[:, 0] != neg[:, 1]]
    e = _normalized(emb)
    score = lambda p: (e[p[:, 0]] * e[p[:, 1]]).sum(-1).numpy()  # noqa: E731
    return {"auc": roc_auc(score(pos), score(neg)), "n_sibling_pairs": len(pos), "n_random_pairs": len(neg)}


def gem_pairs(tok: MedTokTokenizer, data_dir: str | None) -> np.ndarray:
    """(icd9 row, icd10cm row) pairs of the artifact, from the GEM, with ancestor fallback."""
    from medtok_core.datadir import data_file

    gem = pd.read_csv(data_file("kg/gem_icd9_to_icd10cm.csv", data_dir), dtype=str)
    gem = gem[gem["no_map"] != "1"]

    def rows(system: str, codes: pd.Series) -> dict[str, int]:
        out = {}
        for c in codes.unique():
            try:
                out[c] = tok.resolve(f"{system}:{c}", warn=False).code_id
            except MedTokError:
                pass
        return out

    r9, r10 = rows("ICD9CM", gem["icd9cm"]), rows("ICD10CM", gem["icd10cm"])
    pairs = {(r9[a], r10[b]) for a, b in zip(gem["icd9cm"], gem["icd10cm"], strict=True) if a in r9 and b in r10}
    return np.array(sorted(pairs))


def equivalence_mrr(vocab: pd.DataFrame, emb: torch.Tensor, pairs: np.ndarray) -> dict:
    if len(pairs) == 0:
        return {"mrr": float("nan"), "n_queries": 0}
    targets = np.nonzero((vocab["system"] == "ICD10CM").to_numpy())[0]
    pos_of = {int(r): i for i, r in enumerate(targets)}
    e = _normalized(emb)
    queries = np.unique(pairs[:, 0])
    sims = e[queries] @ e[targets].t()                                    # [Q, T]
    truth = torch.zeros_like(sims, dtype=torch.bool)
    qpos = {int(q): i for i, q in enumerate(queries)}
    for a, b in pairs:
        truth[qpos[int(a)], pos_of[int(b)]] = True
    best_true = sims.masked_fill(~truth, -2).max(1).values
    rank = (sims > best_true[:, None]).sum(1) + 1
    return {"mrr": float((1.0 / rank.float()).mean()), "hits@10": float((rank <= 10).float().mean()),
            "n_queries": int(len(queries)), "n_targets": int(len(targets))}


def quality(tok: MedTokTokenizer, emb: torch.Tensor, pairs: np.ndarray, cfg: BenchConfig) -> dict:
    return {"hierarchy": hierarchy_auc(tok.vocab, emb, cfg.n_random_pairs, cfg.seed),
            "equivalence": equivalence_mrr(tok.vocab, emb, pairs)}


def codebook(tok: MedTokTokenizer) -> dict:
    out = {}
    for region, (lo, hi) in tok.config["codebook"]["regions"].items():
        sel = (tok.ids >= lo) & (tok.ids < hi)
        counts = torch.zeros(hi - lo).index_add_(0, (tok.ids[sel] - lo).long(), tok.weights[sel])
        p = counts[counts > 0] / counts.sum()
        out[region] = {"size": hi - lo, "utilization": float((counts > 0).float().mean()),
                       "perplexity": float(torch.exp(-(p * p.log()).sum()))}
    return out


def _time(fn, repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def speed(tok: MedTokTokenizer, artifact: Path) -> dict:
    codes = (tok.vocab["system"] + ":" + tok.vocab["code"]).tolist()
    rng = np.random.default_rng(0)
    sample = [codes[i] for i in rng.integers(0, len(codes), 2000)]
    for c in sample:  # resolve once, as a long-running user would
        tok.embed(c)
    t = time.perf_counter()
    for c in sample:
        tok.embed(c)
    single_us = (time.perf_counter() - t) / len(sample) * 1e6
    batch = [codes[i] for i in rng.integers(0, len(codes), 4096)]
    embed_s = _time(lambda: tok.embed(batch), 5)
    encode_s = _time(lambda: tok.encode(batch), 5)
    res = {"embed_single_us": round(single_us, 2), "embed_batch_codes_per_s": round(len(batch) / embed_s),
           "encode_batch_codes_per_s": round(len(batch) / encode_s)}
    # Full model on new codes: descriptions of 1024 vocabulary codes treated as new (their text
    # embeddings are in the disk cache after training, so this times the model, not MiniLM).
    desc = tok.vocab["description"].astype(str).tolist()[:1024]
    tok.encode_new(desc[:8])
    t = time.perf_counter()
    tok.encode_new(desc, batch_size=512)
    res["encode_new_codes_per_s_cached_text"] = round(len(desc) / (time.perf_counter() - t))
    summary = artifact.parent / "summary.json"
    if summary.is_file():
        import json

        s = json.loads(summary.read_text())
        res.update({f"train_{k}": s.get(k) for k in ("n_codes", "prepare_s", "train_s", "train_codes_per_s",
                                                        "steps", "total_s")})
    return res


def raw_text_embeddings(tok: MedTokTokenizer) -> torch.Tensor:
    from medtok_core.text_encoder import get_encoder

    return get_encoder(tok.config["text_encoder"].get("path")).encode_texts(tok.vocab["description"].astype(str).tolist())


def print_table(results: dict) -> None:
    print(f"{'artifact':<14}{'hier AUC':>10}{'GEM MRR':>10}{'hits@10':>9}{'util t/s/g':>20}{'ppl t/s/g':>24}")
    for name, r in results["quality"].items():
        cb = r.get("codebook")
        util = "/".join(f"{cb[x]['utilization']:.2f}" for x in ("text", "shared", "graph")) if cb else "-"
        ppl = "/".join(f"{cb[x]['perplexity']:.0f}" for x in ("text", "shared", "graph")) if cb else "-"
        print(f"{name:<14}{r['hierarchy']['auc']:>10.3f}{r['equivalence']['mrr']:>10.3f}"
              f"{r['equivalence'].get('hits@10', float('nan')):>9.3f}{util:>20}{ppl:>24}")
    for k, v in results.get("speed", {}).items():
        print(f"  {k}: {v}")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, prog="benchmarks/bench_medtok.py")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    named = [a.split("=", 1) if "=" in a else (Path(a).parent.name, a) for a in cfg.artifacts]
    results: dict = {"quality": {}, "num_threads": torch.get_num_threads()}
    first = None
    for name, path in named:
        tok = MedTokTokenizer.from_pretrained(path)
        first = first or (tok, Path(path))
        pairs = gem_pairs(tok, cfg.data_dir)
        results["quality"][name] = {**quality(tok, tok.embeddings, pairs, cfg), "codebook": codebook(tok),
                                    "n_codes": len(tok)}
    if cfg.raw_text and first is not None:
        tok = first[0]
        results["quality"]["minilm_raw"] = quality(tok, raw_text_embeddings(tok), gem_pairs(tok, cfg.data_dir), cfg)
    if cfg.speed and first is not None:
        results["speed"] = speed(*first)
    write_json(cfg.output, results)
    print_table(results)


if __name__ == "__main__":
    main()
