"""Threads or processes on a small CPU: one ``bench_qa.py`` process on every core against
``--workers`` processes on an equal share of the cores each, started together. This is the choice
``workers:`` makes in ``recipes.pipeline`` (fine-tunes side by side) and ``recipes.evaluate`` (models scored
side by side).

    python benchmarks/bench_workers.py [--workers 2] [--steps 6] [--out benchmarks/results/workers.json]

Reports each layout's aggregate training tokens/s and scoring questions/s (summed over its
processes), its utilisation of the whole machine (``train_mfu`` / ``score_mfu``: model FLOP/s of
all its processes over the all-core matmul peak measured by the one-process run) and the ratio
workers / one process: above 1, a batch of independent fine-tunes or
models finishes sooner side by side. The side-by-side processes start together but their phases
(loading, training, scoring) do not line up exactly; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_QA = REPO / "benchmarks" / "bench_qa.py"


def run_layout(processes: int, threads: int, steps: int, folder: Path) -> list[dict]:
    """Start ``processes`` bench_qa runs at once on ``threads`` threads each; their results."""
    outs = [folder / f"p{processes}-{i}.json" for i in range(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(BENCH_QA), "--threads", str(threads), "--steps", str(steps),
                               "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
             for out in outs]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"error: bench_qa.py failed (exit code {proc.returncode}); run it alone to see why")
    return [json.loads(out.read_text()) for out in outs]


def aggregate(results: list[dict], machine_peak_gflops: float) -> dict:
    """Throughput summed over a layout's processes; ``*_mfu``: their model FLOP/s together (counted
    as bench_qa.py counts them, training in the medtok mode) over the matmul peak of the whole
    machine (all cores, same dtype): the utilisation of the CPU, not of one process."""
    train_flops = sum(r["medtok_tokens_per_s"] * r["flops_per_token"]["train"] for r in results)
    score_flops = sum(r["score_tokens_per_s"] * r["flops_per_token"]["forward"] for r in results)
    return {"processes": len(results), "threads_each": results[0]["threads"],
            "train_tokens_per_s": sum(r["none_tokens_per_s"] for r in results),
            "score_questions_per_s": sum(r["score_questions_per_s"] for r in results),
            "train_mfu": train_flops / (machine_peak_gflops * 1e9),
            "score_mfu": score_flops / (machine_peak_gflops * 1e9),
            "peak_rss_gib_each": max(r["peak_rss_gib"] for r in results)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="processes side by side")
    p.add_argument("--steps", type=int, default=6, help="training steps measured per process")
    p.add_argument("--out", default="benchmarks/results/workers.json")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    if args.workers < 2 or args.workers > cores:
        raise SystemExit(f"error: --workers must be between 2 and the {cores} cores of this machine")
    with tempfile.TemporaryDirectory() as tmp:
        one = run_layout(1, cores, args.steps, Path(tmp))
        many = run_layout(args.workers, max(1, cores // args.workers), args.steps, Path(tmp))
    # The one-process run measured the matmul peak on every core, the machine's.
    peak = one[0]["matmul_peak_gflops"]
    single, side = aggregate(one, peak), aggregate(many, peak)
    result = {"cores": cores, "cpu_flags": one[0]["cpu_flags"], "dtype": one[0]["dtype"],
              "machine_matmul_peak_gflops": peak,
              "one_process": single, "side_by_side": side,
              "train_throughput_ratio": side["train_tokens_per_s"] / single["train_tokens_per_s"],
              "score_throughput_ratio": side["score_questions_per_s"] / single["score_questions_per_s"],
              "load_average": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cpu_flags"}, indent=2))


if __name__ == "__main__":
    main()
