"""Benchmark the code vocabulary: cold build, cached load, lookups, counts per system, peak RSS.

    python benchmarks/bench_vocab.py [--user_codes codes.csv] [--systems ICD10CM,ATC]

The cold build runs in a fresh temporary cache so it never reuses an earlier result.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

import numpy as np


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> None:
    os.environ["MEDTOK_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-vocab-")
    from commons.config import parse_config
    from medtok_core.vocab import VocabConfig, load_or_build_vocab

    cfg = parse_config(VocabConfig, argv, prog="bench_vocab.py")
    cfg.use_cache = True

    t0 = time.perf_counter()
    vocab = load_or_build_vocab(cfg)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = load_or_build_vocab(cfg)
    warm = time.perf_counter() - t0
    assert cached.table.equals(vocab.table)

    rng = np.random.default_rng(0)
    sample = vocab.table.sample(n=min(100_000, len(vocab)), random_state=0)
    undotted = sample["code"].str.replace(".", "", regex=False).str.lower().tolist()
    systems = sample["system"].tolist()
    t0 = time.perf_counter()
    ids = [vocab.id_of(s, c) for s, c in zip(systems, undotted, strict=True)]
    single_us = (time.perf_counter() - t0) / len(ids) * 1e6
    assert ids == sample["code_id"].tolist()
    t0 = time.perf_counter()
    batched = vocab.ids_of(systems, undotted)
    batched_us = (time.perf_counter() - t0) / len(ids) * 1e6
    assert (batched == sample["code_id"].to_numpy()).all()
    picks = rng.integers(0, len(vocab), 10_000)
    t0 = time.perf_counter()
    depth = sum(len(vocab.ancestors(int(i))) for i in picks)
    anc_us = (time.perf_counter() - t0) / len(picks) * 1e6

    print(f"codes: {len(vocab)}")
    for system, n in vocab.counts().items():
        print(f"  {system:<10} {n:>7}")
    print(f"build (cold, empty cache): {cold:.2f} s")
    print(f"load (cached parquet):     {warm:.2f} s")
    print(f"id_of (undotted, lower):   {single_us:.2f} us/code")
    print(f"ids_of (batched):          {batched_us:.3f} us/code")
    print(f"ancestors:                 {anc_us:.2f} us/code (mean depth {depth / len(picks):.2f})")
    print(f"peak RSS:                  {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
