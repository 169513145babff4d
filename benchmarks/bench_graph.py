"""Benchmark: vocabulary + knowledge graph + subgraph index build (cold and cached), assembly of a
batch of 1024 subgraphs (median of repeats), and peak memory (RSS).

    nice python benchmarks/bench_graph.py [--repeats 50] [--batch 1024]

The cold build runs in a fresh temporary cache ($MEDTOK_CACHE_DIR), so nothing is reused.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    os.environ["MEDTOK_CACHE_DIR"] = tempfile.mkdtemp(prefix="medtok-bench-")

    import numpy as np

    from medtok_core.build import BuildConfig, run

    cfg = BuildConfig(progress=False)
    t = time.perf_counter()
    vocab, kg, index, cold, _ = run(cfg)
    cold_total = time.perf_counter() - t
    t = time.perf_counter()
    _, _, _, warm, _ = run(cfg)
    warm_total = time.perf_counter() - t

    rng = np.random.default_rng(0)
    ids = rng.choice(len(vocab), size=args.batch, replace=False)
    index.batch(ids)  # warm-up
    times, times_drop = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        b = index.batch(ids)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        index.batch(ids, drop_edge_p=0.1, rng=rng)
        times_drop.append(time.perf_counter() - t)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"codes {len(vocab):,}; graph {kg.num_nodes:,} nodes, {kg.num_edges // 2:,} edges")
    print("cold build: " + ", ".join(f"{k} {v:.1f}s" for k, v in cold.items()) + f"; total {cold_total:.1f}s")
    print("cached load: " + ", ".join(f"{k} {v:.2f}s" for k, v in warm.items()) + f"; total {warm_total:.1f}s")
    print(f"batch of {args.batch}: median {np.median(times) * 1e3:.1f} ms "
          f"(with edge dropout {np.median(times_drop) * 1e3:.1f} ms); "
          f"{b.node_ids.shape[0]:,} nodes, {b.edge_index.shape[1]:,} directed edges")
    print(f"peak RSS {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
