"""Two candidates for a faster QA training step on a CPU, measured on the real base model:
the attention kernel (PyTorch SDPA picks its flash kernel on a CPU; the math kernel is the
alternative) and the LoRA dropout (one Bernoulli draw per activation of every adapted layer).

    python benchmarks/bench_attention.py [--steps 8] [--threads 0] [--out benchmarks/results/attention.json]

Each variant runs the same batches (the first of an epoch, length-bucketed as training batches
them) on the same model, interleaved step by step so that machine load hits all alike, with a
learning rate too small to move the weights; the figures are medians of per-step time ratios
against the default (flash attention, dropout as configured). Scoring (no backward) is timed
with both kernels the same way. The result says what each choice would buy, not what the
project uses: training and scoring keep SDPA's default kernel and the configured dropout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_qa import questions, random_artifact  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from commons.machine import cpu_flags  # noqa: E402
from qa.base_model import resolve_dtype  # noqa: E402
from qa.model import ModelOptions, build_qa_model  # noqa: E402
from qa.training import EpochBatches, OptimOptions, make_optimizer, split_by_option_set  # noqa: E402


def _math_kernel():
    return sdpa_kernel(SDPBackend.MATH)


def _set_lora_dropout(model, p: float) -> None:
    """The dropout of every LoRA layer (PEFT's ``lora_dropout``), nothing else's."""
    for module in model.modules():
        for drop in getattr(module, "lora_dropout", {}).values():
            if isinstance(drop, torch.nn.Dropout):
                drop.p = p


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="training steps timed per variant (after one warm-up)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--score_n", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="benchmarks/results/attention.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    class _Data:  # bench_qa.questions reads these
        linked, medtok, codes = None, None, 4

    items = questions(_Data)
    train, _ = split_by_option_set(items, 0.2, 0)
    medtok = random_artifact(Path(tempfile.mkdtemp(prefix="bench-attn-")), items, 500, 4)
    dtype = resolve_dtype("auto")
    opts = ModelOptions(prefix_mode="medtok", medtok=medtok, dtype=dtype)
    opts.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = build_qa_model(opts, seed=0).train()
    optimizer = make_optimizer(model, OptimOptions(lr=1e-12))
    epoch = EpochBatches(train, model.encoder, 0, False, args.batch_size, 1, 0, 1, 16)
    batches = [model.encoder.collate([model.encoder.encode(train[i]) for i in idx])
               for idx in epoch.indices(0)[: args.steps + 1]]
    dropout = opts.lora.dropout
    variants = {  # name -> (attention kernel context, LoRA dropout)
        "default": (contextlib.nullcontext, dropout),
        "math_attention": (_math_kernel, dropout),
        "no_lora_dropout": (contextlib.nullcontext, 0.0),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step, batch in enumerate(batches):
        for name, (kernel, p_drop) in variants.items():
            _set_lora_dropout(model, p_drop)
            t = time.perf_counter()
            with kernel():
                loss = model(**batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step:  # the first step warms up allocators and kernels
                times[name].append(time.perf_counter() - t)
        print(f"step {step}: " + ", ".join(f"{n} {v[-1]:.2f}s" for n, v in times.items() if v), file=sys.stderr)
    _set_lora_dropout(model, dropout)
    model.eval()
    score_times: dict[str, list[float]] = {"default": [], "math_attention": []}
    for repeat in range(4):
        for name in score_times:
            t = time.perf_counter()
            with variants[name][0]():
                model.score(items[: args.score_n], batch_size=32)
            if repeat:
                score_times[name].append(time.perf_counter() - t)

    def speedup(base: list[float], other: list[float]) -> float:
        return statistics.median(a / b for a, b in zip(base, other, strict=True))

    res = {"threads": torch.get_num_threads(), "cpu_flags": cpu_flags(), "dtype": str(dtype).replace("torch.", ""),
           "batch_size": args.batch_size, "steps_measured": args.steps, "lora_dropout": dropout,
           "train_step_s_median": {n: statistics.median(v) for n, v in times.items()},
           "train_speedup_math_attention": speedup(times["default"], times["math_attention"]),
           "train_speedup_no_lora_dropout": speedup(times["default"], times["no_lora_dropout"]),
           "score_speedup_math_attention": speedup(score_times["default"], score_times["math_attention"]),
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
