"""Peak memory of a QA fine-tune step on the longest batch of the training split, with and without
``optim.max_batch_tokens`` (row slices with summed gradients: the same update).

    python benchmarks/bench_memory.py [--config configs/qa_quick.yaml] [--prefix_mode text]
        [--linked runs/pipeline_cpu/linked/linked.jsonl] [--budgets 0,1024,768] [--out FILE]

The longest batch (the ``batch_size`` longest prompts of the training split, prefix positions
included) is what sets a fine-tune's peak RSS: with length-bucketed batches it comes once per
epoch, and the process's resident memory never drops below what it needed. Each budget runs in a
fresh process (peak RSS is per process): model load, two optimizer steps on that batch; the JSON
gives each budget's peak RSS, its step time and the step time's ratio to budget 0, with the CPU
flags and dtype beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(args) -> dict:
    import torch

    from commons.config import parse_config
    from commons.machine import machine_facts
    from qa.base_model import resolve_dtype
    from qa.model import build_qa_model
    from qa.training import (
        TrainConfig,
        backward_in_slices,
        load_questions,
        make_optimizer,
        make_split,
        peak_rss_gib,
        release_free_memory,
    )

    argv = ["--config", args.config, "--model.prefix_mode", args.prefix_mode, "--model.medtok", args.medtok or "null",
            "--optim.max_batch_tokens", str(args.budget)]
    if args.linked:
        argv += ["--data.train_file", args.linked]
    cfg = parse_config(TrainConfig, argv, prog="bench_memory")
    model = build_qa_model(cfg.model, lora=True, seed=cfg.seed)
    train, _ = make_split(load_questions(cfg.data), cfg.data)
    encoded = model.encoder.encode_many(train)
    longest = sorted(encoded, key=model.encoder.length)[-cfg.optim.batch_size:]
    batch = model.encoder.collate(longest)
    optimizer = make_optimizer(model, cfg.optim)

    class OneProcess:  # backward_in_slices on one process, without accelerate's wrapping
        backward = staticmethod(lambda loss: loss.backward())
        no_sync = staticmethod(lambda _model: __import__("contextlib").nullcontext())

    model.train()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        backward_in_slices(model, batch, OneProcess(), cfg.optim.max_batch_tokens)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        release_free_memory()
        times.append(time.perf_counter() - t0)
    positions = batch["input_ids"].shape[0] * (batch["input_ids"].shape[1] + batch["prefix_mask"].shape[1])
    facts = machine_facts()
    return {"budget": cfg.optim.max_batch_tokens, "prefix_mode": cfg.model.prefix_mode, "dtype": resolve_dtype(cfg.model.dtype),
            "threads": torch.get_num_threads(), "batch_positions": positions, "peak_rss_gib": peak_rss_gib(),
            "step_s": min(times), "cpu_flags": facts["cpu_flags"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/qa_quick.yaml")
    p.add_argument("--prefix_mode", default="text", help="text: the longest prompts (code descriptions added)")
    p.add_argument("--medtok", default="", help="MedTok artifact (methods that need one)")
    p.add_argument("--linked", default="", help="linked JSONL (codes for the prefix); default raw MedDDx")
    p.add_argument("--budgets", default="0,1024,768", help="optim.max_batch_tokens values (0: off)")
    p.add_argument("--budget", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, in a child
    p.add_argument("--out", default="benchmarks/results/memory.json")
    args = p.parse_args()
    if args.budget is not None:
        print(json.dumps(measure(args)))
        return
    results = []
    for budget in (int(b) for b in args.budgets.split(",")):
        cmd = [sys.executable, __file__, "--budget", str(budget), "--config", args.config,
               "--prefix_mode", args.prefix_mode, "--medtok", args.medtok, "--linked", args.linked]
        done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: the measurement with budget {budget} failed:\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "cpu_flags"}), flush=True)
    base = next((r for r in results if r["budget"] == 0), results[0])
    for r in results:
        r["step_time_ratio"] = r["step_s"] / base["step_s"]
    out = {"command": " ".join(sys.argv), "load_average": os.getloadavg(), "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
