"""Where a QA training step and a scoring batch spend their time (torch.profiler), and how much
of the training data is padding.

    python benchmarks/profile_qa.py [--steps 3] [--batch_size 8] [--length_buckets 0]

Prints the profiler's top operators by self CPU time for training steps and for scoring, and the
share of padded positions over one epoch of the Intermediate training split as batched by
:class:`qa.training.EpochBatches`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_qa import questions, random_artifact  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from qa.base_model import resolve_dtype  # noqa: E402
from qa.model import ModelOptions, build_qa_model  # noqa: E402
from qa.training import EpochBatches, make_optimizer, split_by_option_set  # noqa: E402


def padding_share(batches: EpochBatches, epoch: int = 0) -> dict:
    real = padded = 0
    for batch in batches.epoch(epoch):
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    return {"real_tokens": real, "padded_positions": padded, "padding_share": 1 - real / padded}


def main() -> None:
    import tempfile

    from qa.training import OptimOptions

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--length_buckets", type=int, default=0)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--mode", default="medtok")
    p.add_argument("--linked")
    p.add_argument("--medtok")
    p.add_argument("--codes", type=int, default=4)
    args = p.parse_args()
    items = questions(args)
    train, _ = split_by_option_set(items, 0.2, 0)
    medtok = args.medtok or random_artifact(Path(tempfile.mkdtemp(prefix="profile-qa-")), items, 500, args.codes)
    opts = ModelOptions(prefix_mode=args.mode, medtok=None if args.mode == "none" else medtok,
                        dtype=resolve_dtype("auto"))
    opts.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = build_qa_model(opts, seed=0).train()
    optimizer = make_optimizer(model, OptimOptions(lr=1e-4))
    batches = EpochBatches(train, model.encoder, 0, True, args.batch_size, 1, 0, 1,
                           length_buckets=args.length_buckets)
    print("padding over one epoch:", padding_share(batches), flush=True)
    it = batches.epoch(0)
    next_batch = lambda: next(it)  # noqa: E731

    def step():
        loss = model(**next_batch())["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    model.score(train[:32], batch_size=32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.score(train[32:96], batch_size=32)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
