"""QA fine-tune/scoring figures with SmolLM2-135M-Instruct on this CPU (dtype auto: fp32 without native bf16).

    nice python benchmarks/bench_qa.py [--steps 6] [--batch_size 8] [--medtok DIR] [--linked FILE]

Measures, on MedDDx Intermediate questions: training step time and tokens/s for prefix modes
``none`` and ``medtok`` interleaved on the same batches in one process (the ratio is the prefix
overhead), the extrapolated time per epoch of the 80% training split, scoring throughput, and the
process's peak RSS. Without ``--medtok``/``--linked`` it uses a random MedTok artifact (d=64) and
gives every question ``--codes`` random linked codes, which is what the overhead depends on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from disease_linking.questions import CodeRef, Mention, load_mcq  # noqa: E402
from qa.base_model import DEFAULT_BASE_MODEL, load_base_model, resolve_dtype  # noqa: E402
from qa.model import ModelOptions, build_qa_model  # noqa: E402
from qa.tiny import build_tiny_medtok  # noqa: E402
from qa.training import make_optimizer, peak_rss_gib, split_by_option_set  # noqa: E402


def questions(args) -> list:
    from medtok_core.datadir import data_file

    path = Path(args.linked) if args.linked else data_file("meddx/MedDDx.json")
    items, _ = load_mcq(path)
    return [i for i in items if i.tier == "Intermediate"]


def random_artifact(root: Path, items: list, n_codes: int, per_item: int):
    codes = [("ICD10CM", f"Z{i:03d}", f"synthetic condition {i}") for i in range(n_codes)]
    build_tiny_medtok(root / "medtok", codes, dim=64, top_k=2, codebook=96)
    rng = random.Random(0)
    for it in items:
        picks = rng.sample(codes, per_item)
        it.mentions = [Mention(c[2], 0, 1, "stem", [CodeRef(c[0], c[1])]) for c in picks]
    return str(root / "medtok")


def step_time(model, optimizer, batch) -> tuple[float, float]:
    t = time.perf_counter()
    loss = model(**batch)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t, float(loss.detach())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--codes", type=int, default=4, help="random codes per question (random artifact only)")
    p.add_argument("--medtok")
    p.add_argument("--linked")
    p.add_argument("--score_n", type=int, default=64)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default="benchmarks/results_qa.json")
    args = p.parse_args()
    torch.manual_seed(0)
    items = questions(args)
    train, _val = split_by_option_set(items, 0.2, 0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-qa-"))
    medtok = args.medtok or random_artifact(tmp, items, 500, args.codes)

    t = time.perf_counter()
    dtype = resolve_dtype(args.dtype)
    base = load_base_model(DEFAULT_BASE_MODEL, dtype)
    load_s = time.perf_counter() - t
    # PEFT injects LoRA layers into the module it wraps: each mode gets its own copy of the base,
    # taken before any wrapping.
    bases = {"none": _fresh_copy(base), "medtok": base}
    models = {}
    for mode in ("none", "medtok"):
        # Both modes wrap the same frozen base weights: the comparison isolates the prefix.
        opts = ModelOptions(prefix_mode=mode, medtok=medtok if mode != "none" else None, dtype=dtype,
                            gradient_checkpointing=args.gradient_checkpointing)
        opts.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
        m = build_qa_model(opts, model_and_tokenizer=bases[mode], seed=0)
        models[mode] = (m.train(), make_optimizer(m, _optim()))
    rng = random.Random(0)
    batch_items = [rng.sample(train, args.batch_size) for _ in range(args.steps + 1)]
    times = {m: [] for m in models}
    tokens = {m: [] for m in models}
    for step, chunk in enumerate(batch_items):
        for mode, (m, opt) in models.items():
            batch = m.encoder.collate([m.encoder.encode(i) for i in chunk])
            dt, _ = step_time(m, opt, batch)
            print(f"step {step} {mode}: {dt:.2f}s, {int(batch['attention_mask'].sum())} tokens", file=sys.stderr,
                  flush=True)
            if step:  # the first step warms up allocators and kernels
                times[mode].append(dt)
                tokens[mode].append(int(batch["attention_mask"].sum() + batch["prefix_mask"].sum()))
    res = {"device": "cpu", "threads": torch.get_num_threads(), "base_model": DEFAULT_BASE_MODEL,
           "dtype": dtype, "batch_size": args.batch_size, "steps_measured": args.steps,
           "codes_per_question": args.codes, "gradient_checkpointing": args.gradient_checkpointing,
           "base_load_s": load_s, "train_questions": len(train)}
    for mode in models:
        med = statistics.median(times[mode])
        res[f"{mode}_step_s_median"] = med
        res[f"{mode}_tokens_per_s"] = sum(tokens[mode]) / sum(times[mode])
        res[f"{mode}_epoch_s_extrapolated"] = med * -(-len(train) // args.batch_size)
    res["prefix_overhead_ratio"] = res["medtok_step_s_median"] / res["none_step_s_median"]
    m = models["medtok"][0]
    t = time.perf_counter()
    m.score(items[: args.score_n], batch_size=32)
    res["score_questions_per_s"] = args.score_n / (time.perf_counter() - t)
    res["score_1769_s_extrapolated"] = 1769 / res["score_questions_per_s"]
    res["peak_rss_gib"] = peak_rss_gib()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


def _optim():
    from qa.training import OptimOptions

    return OptimOptions(lr=1e-4)


def _fresh_copy(base):
    """A second LoRA model needs its own base module (PEFT injects layers in place)."""
    import copy

    model, tok = base
    return copy.deepcopy(model), tok


if __name__ == "__main__":
    main()
