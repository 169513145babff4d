"""QA fine-tune/scoring figures with SmolLM2-135M-Instruct on this CPU (dtype auto: bf16 with native bf16).

    nice python benchmarks/bench_qa.py [--steps 6] [--batch_size 8] [--medtok DIR] [--linked FILE]

Measures, on MedDDx Intermediate questions: training step time and tokens/s for prefix modes
``none`` and ``medtok`` interleaved on the same batches in one process (the ratio is the prefix
overhead), the extrapolated time per epoch of the 80% training split, scoring throughput, and the
process's peak RSS. Without ``--medtok``/``--linked`` it uses a random MedTok artifact (d=64) and
gives every question ``--codes`` random linked codes, which is what the overhead depends on.

Utilisation (``train_mfu``, ``score_mfu``) is achieved *model* FLOP/s divided by the peak matmul
FLOP/s of the same dtype on the model's own shapes, measured in the same process (several times
between the phases; the median is used, so machine load hits both sides alike). Model FLOPs:

* forward: 2 x N per real token, N = non-embedding parameters of the base model (every Linear of
  the decoder; the embedding is a lookup and the LM head runs on the last position only);
* training: forward + backward = 2 x N + 2 x N per real token. The base is frozen, so the
  backward computes input gradients only (one matmul per weight, the weight-gradient half is
  skipped); the LoRA matrices add < 1 %.
* real tokens: prompt tokens + prefix tokens, not padding. Attention score FLOPs (T^2 terms)
  and recomputation (gradient checkpointing) are not counted: they are overhead, not model work.
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

from commons.machine import cpu_flags  # noqa: E402
from disease_linking.questions import CodeRef, Mention, load_mcq  # noqa: E402
from qa.base_model import DEFAULT_BASE_MODEL, load_base_model, resolve_dtype  # noqa: E402
from qa.model import ModelOptions, build_qa_model  # noqa: E402
from qa.tiny import build_tiny_medtok  # noqa: E402
from qa.training import (  # noqa: E402
    EpochBatches,
    current_rss_gib,
    make_optimizer,
    peak_rss_gib,
    release_free_memory,
    split_by_option_set,
)


def questions(args) -> list:
    from commons.datadir import data_file

    path = Path(args.linked) if args.linked else data_file("meddx/MedDDx.json")
    items, _ = load_mcq(path, skip_invalid=True)  # MedDDx holds two unscoreable questions
    return [i for i in items if i.tier == "Intermediate"]


def random_artifact(root: Path, items: list, n_codes: int, per_item: int):
    codes = [("ICD10CM", f"Z{i:03d}", f"synthetic condition {i}") for i in range(n_codes)]
    build_tiny_medtok(root / "medtok", codes, dim=64, top_k=2, codebook=96)
    rng = random.Random(0)
    for it in items:
        picks = rng.sample(codes, per_item)
        it.mentions = [Mention(c[2], 0, 1, "stem", [CodeRef(c[0], c[1])]) for c in picks]
    return str(root / "medtok")


def non_embedding_params(model) -> int:
    """Parameters of every nn.Linear of the decoder body (the LM head, applied to one position, excluded)."""
    body = model.base_model  # LlamaModel / GPT2Model / ...: the decoder under the LM head
    return sum(m.weight.numel() for m in body.modules() if isinstance(m, torch.nn.Linear))


def matmul_peak_flops(hidden: int, intermediate: int, dtype: torch.dtype, tokens: int = 1024,
                      repeats: int = 5) -> float:
    """Best FLOP/s of a plain matmul over the model's weight shapes (activations [tokens, in] x
    weight [in, out]), each shape's median of ``repeats`` timed runs."""
    best = 0.0
    for k, n in ((hidden, intermediate), (intermediate, hidden), (hidden, hidden)):
        a = torch.randn(tokens, k, dtype=dtype)
        b = torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b  # warm-up (oneDNN primitive creation)
        inner = max(1, int(2e10 // (2 * tokens * k * n)))  # ~20 GFLOP per timed run
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                a @ b
            times.append((time.perf_counter() - t) / inner)
        best = max(best, 2 * tokens * k * n / statistics.median(times))
    return best


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
    p.add_argument("--score_repeats", type=int, default=3)
    p.add_argument("--length_buckets", type=int, default=0, help="as data.length_buckets of training")
    p.add_argument("--release_memory", action=argparse.BooleanOptionalAction, default=True,
                   help="malloc_trim after each step, as training's release_memory")
    p.add_argument("--baseline", action="store_true",
                   help="also time PEFT's own LoRA forward on unbucketed batches (the state before issue 10)")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); the peak is measured with the same count")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default="benchmarks/results_qa.json")
    p.add_argument("--page", help="also write the block bench:qa of this page from the result (docs/performance.md)")
    p.add_argument("--from_json", help="format an existing result JSON into --page instead of measuring")
    args = p.parse_args()
    if args.from_json:
        write_page_block(args.page or "docs/performance.md", json.loads(Path(args.from_json).read_text()), args.from_json)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    items = questions(args)
    train, _val = split_by_option_set(items, 0.2, 0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-qa-"))
    medtok = args.medtok or random_artifact(tmp, items, 500, args.codes)

    t = time.perf_counter()
    dtype = resolve_dtype(args.dtype)
    base = load_base_model(DEFAULT_BASE_MODEL, dtype)
    load_s = time.perf_counter() - t
    n_params = non_embedding_params(base[0])
    cfg = base[0].config
    peak_args = (cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size), base[0].dtype)
    peaks = [matmul_peak_flops(*peak_args)]
    # PEFT injects LoRA layers into the module it wraps: each mode gets its own copy of the base,
    # taken before any wrapping.
    modes = ("none", "medtok") + (("baseline",) if args.baseline else ())
    bases = {mode: _fresh_copy(base) for mode in modes[1:]}
    bases[modes[0]] = base
    models = {}
    for mode in modes:
        # Both modes wrap the same frozen base weights: the comparison isolates the prefix.
        method = "medtok" if mode == "baseline" else mode
        opts = ModelOptions(prefix_mode=method, medtok=medtok if method != "none" else None, dtype=dtype,
                            gradient_checkpointing=args.gradient_checkpointing)
        opts.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
        m = build_qa_model(opts, model_and_tokenizer=bases[mode], seed=0)
        if mode == "baseline":
            _peft_lora_forward(m)
        models[mode] = (m.train(), make_optimizer(m, _optim()))
    # The first batches of an epoch as training forms them (bucketed by length with
    # --length_buckets N), the same questions for both modes.
    epoch = EpochBatches(train, models["medtok"][0].encoder, 0, False, args.batch_size, 1, 0, 1, args.length_buckets)
    batch_items = [[train[i] for i in idx] for idx in epoch.indices(0)[: args.steps + 1]]
    # The state before issue 10 (--baseline): PEFT's float32 LoRA path on unbucketed batches,
    # interleaved with the others, so that machine load hits all modes alike.
    plain = EpochBatches(train, models["medtok"][0].encoder, 0, False, args.batch_size, 1, 0, 1, 0)
    baseline_items = [[train[i] for i in idx] for idx in plain.indices(0)[: args.steps + 1]]
    padded = {mode: [0, 0] for mode in models}  # real tokens, positions (prompt part)
    times = {m: [] for m in models}
    tokens = {m: [] for m in models}
    for step, chunk in enumerate(batch_items):
        peaks.append(matmul_peak_flops(*peak_args, repeats=3))  # sampled all along: the load drifts
        for mode, (m, opt) in models.items():
            batch = m.encoder.collate([m.encoder.encode(i) for i in (baseline_items[step] if mode == "baseline" else chunk)])
            dt, _ = step_time(m, opt, batch)
            if args.release_memory:  # as training does after each step (its cost shows in later steps)
                release_free_memory()
            print(f"step {step} {mode}: {dt:.2f}s, {int(batch['attention_mask'].sum())} tokens", file=sys.stderr,
                  flush=True)
            if step:  # the first step warms up allocators and kernels
                padded[mode][0] += int(batch["attention_mask"].sum())
                padded[mode][1] += batch["attention_mask"].numel()
                times[mode].append(dt)
                tokens[mode].append(int(batch["attention_mask"].sum() + batch["prefix_mask"].sum()))
    peaks.append(matmul_peak_flops(*peak_args))
    res = {"device": "cpu", "threads": torch.get_num_threads(), "base_model": DEFAULT_BASE_MODEL,
           "cpu_flags": cpu_flags(), "dtype": dtype, "non_embedding_params": n_params, "batch_size": args.batch_size, "steps_measured": args.steps,
           "codes_per_question": args.codes, "length_buckets": args.length_buckets,
           "release_memory": args.release_memory,
           "padding_share": 1 - padded["medtok"][0] / padded["medtok"][1],
           "gradient_checkpointing": args.gradient_checkpointing,
           "base_load_s": load_s, "train_questions": len(train)}
    for mode in models:
        med = statistics.median(times[mode])
        res[f"{mode}_step_s_median"] = med
        # Median of per-step rates: a load spike on this shared machine moves one step, not the figure.
        res[f"{mode}_tokens_per_s"] = statistics.median(n / dt for n, dt in zip(tokens[mode], times[mode], strict=True))
        res[f"{mode}_epoch_s_extrapolated"] = med * -(-len(train) // args.batch_size)
    # Same batches, consecutive runs: the median of per-step ratios cancels slow load drift.
    res["prefix_overhead_ratio"] = statistics.median(
        a / b for a, b in zip(times["medtok"], times["none"], strict=True))
    if args.baseline:
        res["baseline_padding_share"] = 1 - padded["baseline"][0] / padded["baseline"][1]
        res["train_speedup_vs_baseline"] = res["medtok_tokens_per_s"] / res["baseline_tokens_per_s"]
    m = models["medtok"][0]
    scored = items[: args.score_n]
    score_tokens = sum(int(b["attention_mask"].sum() + b["prefix_mask"].sum())
                       for b in (m.encoder.collate([m.encoder.encode(i) for i in scored[s:s + 32]])
                                 for s in range(0, len(scored), 32)))
    score_times = []
    for _ in range(args.score_repeats):
        t = time.perf_counter()
        m.score(scored, batch_size=32)
        score_times.append(time.perf_counter() - t)
    peaks.append(matmul_peak_flops(*peak_args))
    score_s = statistics.median(score_times)
    res["score_questions_per_s"] = args.score_n / score_s
    res["score_tokens_per_s"] = score_tokens / score_s
    res["score_1769_s_extrapolated"] = 1769 / res["score_questions_per_s"]
    peak = statistics.median(peaks)
    res["matmul_peak_gflops"] = peak / 1e9
    res["matmul_peak_gflops_samples"] = [round(p / 1e9, 1) for p in peaks]
    res["flops_per_token"] = {"forward": 2 * n_params, "train": 4 * n_params}
    # Utilisation of the medtok mode (what the experiment trains); none beside it.
    for mode in models:
        res[f"{mode}_train_mfu"] = res[f"{mode}_tokens_per_s"] * 4 * n_params / peak
    res["train_mfu"] = res["medtok_train_mfu"]
    res["score_mfu"] = res["score_tokens_per_s"] * 2 * n_params / peak
    res["peak_rss_gib"] = peak_rss_gib()
    res["rss_gib_at_end"] = current_rss_gib()
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    if args.page:
        write_page_block(args.page, res, args.out)


def _optim():
    from qa.training import OptimOptions

    return OptimOptions(lr=1e-4)


def _peft_lora_forward(model):
    """PEFT's own LoRA forward on every layer (undoes qa.lora.lean_lora)."""
    from peft.tuners.lora import Linear

    for module in model.modules():
        if type(module) is Linear and "forward" in vars(module):
            del module.forward


def write_page_block(page: str, res: dict, source: str) -> None:
    """The QA speed figures of the performance page, generated from a result JSON (never retyped)."""
    from commons.io import page_link, replace_marked_block

    link = page_link(page, source)
    body = (f"QA speed, SmolLM2-135M, batch {res['batch_size']}, {res['dtype']}, {res['threads']} threads, "
            f"CPU flags {', '.join(res['cpu_flags'])}, load average {res['load_average'][0]:.1f} "
            f"(`python benchmarks/bench_qa.py --page docs/performance.md`; [`{source}`]({link})):\n\n"
            f"| what | figure |\n|---|---|\n"
            f"| training utilisation `train_mfu` (medtok prefix) | {res['train_mfu']:.2f} of the same-run "
            f"{res['dtype']} matmul peak ({res['matmul_peak_gflops']:.0f} GFLOP/s) |\n"
            f"| scoring utilisation `score_mfu` | {res['score_mfu']:.2f} |\n"
            f"| training step (8 questions) | {res['medtok_step_s_median']:.1f} s median, "
            f"{res['medtok_tokens_per_s']:.0f} tokens/s; one epoch of {res['train_questions']} questions "
            f"≈ {res['medtok_epoch_s_extrapolated'] / 60:.0f} min |\n"
            f"| MedTok prefix overhead (step time medtok / none, same batches) | {res['prefix_overhead_ratio']:.2f} |\n"
            f"| scoring | {res['score_questions_per_s']:.1f} questions/s (all 1769 ≈ "
            f"{res['score_1769_s_extrapolated'] / 60:.1f} min per model) |\n"
            f"| peak RSS of the benchmark (several model copies) | {res['peak_rss_gib']:.2f} GiB |")
    replace_marked_block(page, "bench:qa", body)


def _fresh_copy(base):
    """A second LoRA model needs its own base module (PEFT injects layers in place)."""
    import copy

    model, tok = base
    return copy.deepcopy(model), tok


if __name__ == "__main__":
    main()
