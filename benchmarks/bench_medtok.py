"""Quality and speed of MedTok artifacts.

    python benchmarks/bench_medtok.py --artifacts both=runs/medtok_quick/artifact,text=runs/medtok_quick_text/artifact \
        --output runs/bench_medtok.json

Quality (per artifact):
- codebook utilisation and perplexity per region, over the exported token table;
- hierarchy preservation: ROC-AUC of cosine similarity separating sibling pairs (same parent)
  from random pairs of the same system;
(metrics: :mod:`medtok_core.quality`, shared with ``python -m recipes.medtok_quality``)
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commons.config import parse_config  # noqa: E402
from commons.errors import cli_entry  # noqa: E402
from commons.io import write_json  # noqa: E402
from medtok_core.quality import codebook_usage, equivalence_mrr, gem_pairs, hierarchy_auc  # noqa: E402
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


def quality(tok: MedTokTokenizer, emb: torch.Tensor, pairs: np.ndarray, cfg: BenchConfig) -> dict:
    return {"hierarchy": hierarchy_auc(tok.vocab, emb, cfg.n_random_pairs, cfg.seed),
            "equivalence": equivalence_mrr(tok.vocab, emb, pairs)}


def codebook(tok: MedTokTokenizer) -> dict:
    return codebook_usage(tok.ids, tok.weights, tok.config["codebook"]["regions"])


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
