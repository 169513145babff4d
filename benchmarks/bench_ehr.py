"""EHR models' speed and memory on CPU: pretraining throughput (patients x events per second) and peak
memory / step time against sequence length, for both backbones.

    python benchmarks/bench_ehr.py [--lengths 512,1024,2048,4096] [--threads 1] [--out benchmarks/results/ehr.json]

Backbones (ehr/model.py): ``mamba`` = EhrMamba (transformers' MambaModel, mambapy's parallel scan);
``transformer`` = the LLaMA-shaped baseline (sdpa attention, causal). Both at the default model
(``ModelOptions()``: hidden 64, 2 layers, SSM state 8, 4 heads), float32, the learned code embedding.

1. Throughput: next-token pretraining steps (forward, backward, AdamW) on the committed synthetic
   fixture's training timelines (``ehr data`` at max_len 512), batch 8: patients/s = sequences/s,
   events/s = real (non-pad) tokens/s.
2. Memory and time vs length: each (backbone, length) in a fresh process (peak RSS is per process):
   one pretraining step on a batch of ``--batch`` random sequences of that length, then the faster
   of two timed steps; peak memory = the process's peak RSS (VmHWM, its mark reset just before the
   first step) minus its RSS then: what the steps themselves added.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "ehr_clinosim_meds"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM), so the peak counts from here (imports and model building
    can peak higher than a short sequence's step). False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _model(vocab, backbone: str):
    from ehr.model import ModelOptions
    from ehr.train import build_model

    return build_model(vocab, ModelOptions(backbone=backbone), seed=0).train()


def one_length(backbone: str, length: int, batch: int, threads: int) -> dict:
    """Run in a fresh process: peak memory and step time of pretraining steps at ``length``."""
    import torch

    from ehr.sequences import Vocab

    torch.set_num_threads(threads)
    vocab = Vocab()
    for i in range(500):
        vocab.add(f"CODE{i}")
        vocab.train_counts[f"CODE{i}"] = 10
    model = _model(vocab, backbone)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch_t = {"input_ids": torch.randint(20, len(vocab), (batch, length), generator=g),
               "token_type_ids": torch.full((batch, length), 5), "ages": torch.full((batch, length), 60),
               "times": torch.linspace(0, 400, length).repeat(batch, 1),
               "visit_segments": torch.ones(batch, length, dtype=torch.long),
               "visit_orders": torch.ones(batch, length, dtype=torch.long),
               "attention_mask": torch.ones(batch, length, dtype=torch.long)}
    reset = _reset_peak_rss()
    before = _rss_mib()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss = model.pretrain_loss(batch_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"backbone": backbone, "length": length, "batch": batch,
            "peak_memory_mib": round(_status_mib("VmHWM") - before, 1), "peak_mark_reset": reset, "step_s_best_of_2": round(min(times[1:]), 3),
            "first_step_s": round(times[0], 3)}


def throughput(backbone: str, steps: int, batch: int, threads: int, prepared: Path) -> dict:
    import torch

    from ehr.model import collate
    from ehr.train import batch_indices, load_prepared

    torch.set_num_threads(threads)
    samples, vocab = load_prepared(prepared)
    records = samples[(samples["kind"] == "pretrain") & (samples["split"] == "train")].to_dict("records")
    model = _model(vocab, backbone)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seqs = events = 0
    elapsed = 0.0
    for step in range(steps + 1):
        b = collate([records[i] for i in batch_indices(len(records), step, batch, 0)])
        t0 = time.perf_counter()
        loss = model.pretrain_loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:  # the first step (allocation, lazy imports) is not timed
            elapsed += time.perf_counter() - t0
            seqs += len(b["input_ids"])
            events += int(b["attention_mask"].sum())
    return {"backbone": backbone, "steps": steps, "batch": batch, "seconds": round(elapsed, 2),
            "patients_per_s": round(seqs / elapsed, 2), "events_per_s": round(events / elapsed, 1),
            "mean_events_per_patient": round(events / seqs, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step in the length sweep")
    ap.add_argument("--steps", type=int, default=8, help="timed pretraining steps for the throughput")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine "
                    "two threads measured several times slower)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ehr.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: backbone,length in a fresh process
    args = ap.parse_args()
    if args.one:
        backbone, length = args.one.split(",")
        print(json.dumps(one_length(backbone, int(length), args.batch, args.threads)))
        return

    import torch

    from commons.machine import machine_facts
    from ehr.data import DataOptions, prepare

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    result = {"what": "EHR pretraining speed and memory on CPU (benchmarks/bench_ehr.py)",
              "backbones": {"mamba": "EhrMamba: transformers MambaModel, mambapy parallel scan (use_mambapy=True)",
                            "transformer": "LLaMA-shaped causal transformer baseline (LlamaModel, sdpa attention)"},
              "model": "ModelOptions() defaults: hidden 64, 2 layers, SSM state 8, 4 heads, learned code embedding",
              "dtype": "float32", "threads": args.threads, "machine": machine_facts(),
              "command": "python benchmarks/bench_ehr.py " + " ".join(sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmp:
        prepare(DataOptions(max_len=512), FIXTURE, Path(tmp) / "prep")
        result["throughput"] = {"data": "committed clinosim fixture, training timelines, max_len 512",
                                "rows": [throughput(b, args.steps, 8, args.threads, Path(tmp) / "prep")
                                         for b in ("mamba", "transformer")]}
    rows = []
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for length in [int(x) for x in args.lengths.split(",")]:
        for backbone in ("mamba", "transformer"):
            proc = subprocess.run([sys.executable, __file__, "--one", f"{backbone},{length}", "--batch", str(args.batch),
                                   "--threads", str(args.threads)], capture_output=True, text=True, env=env)
            if proc.returncode:
                rows.append({"backbone": backbone, "length": length, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    result["memory_vs_length"] = {"batch": args.batch, "rows": rows,
                                  "note": "peak RSS growth of a fresh process over three pretraining steps "
                                          "(forward, backward, AdamW; VmHWM reset before the first); step time: the faster of steps 2 and 3"}
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    result["machine_after"] = {"load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["throughput"], indent=1))
    print(f"wrote {args.out} in {result['total_seconds']} s")


if __name__ == "__main__":
    main()
