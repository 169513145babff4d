"""What MuFuse's multiplication costs against additive fusion (issue 28: it must not cost more than a
few percent of a step).

    python benchmarks/bench_mufuse.py [--steps 20] [--batch 32] [--length 256] [--threads 1]
                                      [--out benchmarks/results/mufuse.json]

Two measurements, each interleaved variant by variant so that machine load hits both alike, medians:
  fusion alone   forward + backward of the fusion on [batch, length, feature_dim] -> ns per observation
  training step  a whole MedFuse step (embeddings, encoder, head, AdamW) on the same random batch of
                 triplets (a vocabulary of lab features, random values and times: cost does not depend
                 on what the values mean) -> ms per step, and MuFuse / additive per step
The JSON carries the CPU model and flags, torch threads and the dtype (float32: MedFuse trains in it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from commons.machine import machine_facts  # noqa: E402
from ehr.medfuse.fusion import build_fusion  # noqa: E402
from ehr.medfuse.model import MedFuseOptions  # noqa: E402
from ehr.medfuse.run import build_model  # noqa: E402
from ehr.sequences import Vocab  # noqa: E402

VARIANTS = ("mufuse", "additive")


def random_batch(vocab_size: int, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    numeric = torch.rand(batch, length, generator=g) < 0.8
    return {"tokens": torch.randint(30, vocab_size, (batch, length), generator=g),
            "values": torch.randn(batch, length, generator=g) * numeric, "numeric": numeric,
            "hours": torch.rand(batch, length, generator=g) * 48, "mask": torch.ones(batch, length, dtype=torch.bool),
            "labels": (torch.rand(batch, generator=g) < 0.2).float()}


def time_fusion_alone(args) -> dict:
    """Median ns per observation of fusion forward + backward."""
    f = torch.randn(args.batch, args.length, args.feature_dim, requires_grad=True)
    v = torch.randn(args.batch, args.length, args.value_dim, requires_grad=True)
    modules = {n: build_fusion(n, args.feature_dim, args.value_dim) for n in VARIANTS}
    times = {n: [] for n in VARIANTS}
    for _ in range(args.steps * 5):
        for name, module in modules.items():
            start = time.perf_counter()
            module(f, v).sum().backward()
            times[name].append(time.perf_counter() - start)
    per_obs = args.batch * args.length
    return {n: round(statistics.median(t) / per_obs * 1e9, 2) for n, t in times.items()}


def time_steps(args) -> dict:
    """Median ms per MedFuse training step per fusion, and the median of per-step ratios."""
    vocab = Vocab()
    for i in range(args.features):
        vocab.add(f"LAB:{i}")
    batch = random_batch(len(vocab), args.batch, args.length)
    runs = {}
    for name in VARIANTS:
        opts = MedFuseOptions(fusion=name, feature_dim=args.feature_dim, value_dim=args.value_dim,
                              hidden=args.hidden, layers=args.layers, heads=4, dropout=0.0)
        model = build_model("medfuse", vocab, opts, seed=0)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times = {n: [] for n in VARIANTS}
    for step in range(args.steps + 2):
        for name, (model, optimizer) in runs.items():
            start = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 2:  # the first steps warm up allocators
                times[name].append(time.perf_counter() - start)
    ratios = [m / a for m, a in zip(times["mufuse"], times["additive"], strict=True)]
    return {"ms_per_step": {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()},
            "mufuse_over_additive_per_step": round(statistics.median(ratios), 4),
            "ratio_quartiles": [round(q, 4) for q in statistics.quantiles(ratios, n=4)]}


def main_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--features", type=int, default=200)
    p.add_argument("--feature_dim", type=int, default=64)
    p.add_argument("--value_dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/mufuse.json")
    args = p.parse_args(argv)
    if args.steps < 4 or min(args.batch, args.length, args.threads) < 1:
        p.error("--steps must be at least 4 (the ratio quartiles need them); --batch, --length, --threads at least 1")
    if args.feature_dim % args.value_dim:
        p.error("--feature_dim must be a multiple of --value_dim (the partition factor)")
    return args


if __name__ == "__main__":
    args = main_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    result = {"what": "MuFuse vs additive fusion cost (issue 28)", "dtype": str(torch.get_default_dtype()),
              "sizes": {k: getattr(args, k) for k in ("batch", "length", "features", "feature_dim", "value_dim",
                                                      "hidden", "layers", "steps")},
              "partition_factor": args.feature_dim // args.value_dim,
              "fusion_alone_ns_per_observation": time_fusion_alone(args), **time_steps(args),
              "machine": machine_facts()}
    step_ms = result["ms_per_step"]["additive"]
    obs = args.batch * args.length
    extra = result["fusion_alone_ns_per_observation"]["mufuse"] - result["fusion_alone_ns_per_observation"]["additive"]
    result["mufuse_extra_fusion_share_of_step"] = round(extra * obs / 1e6 / step_ms, 5)
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("fusion_alone_ns_per_observation", "ms_per_step",
                                             "mufuse_over_additive_per_step", "mufuse_extra_fusion_share_of_step",
                                             "seconds")}))
