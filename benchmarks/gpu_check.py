"""GPU check: LLaMA-3.1-8B's shape (random weights, no download) with LoRA and every prefix method
through the project's QA model, bf16, a few training steps under accelerate, then scoring.

    python benchmarks/gpu_check.py                   # one GPU (H100: well under 8 minutes)
    python benchmarks/gpu_check.py --deepspeed on    # also a ZeRO-2 run of one method (needs deepspeed)
    python benchmarks/gpu_check.py --tiny            # a tiny LLaMA on CPU in seconds (what the test runs)

Writes one JSON (``--out``): per prefix method the training step time, training tokens/s, scoring
questions/s, peak GPU memory (``torch.cuda.max_memory_allocated``) and MFU, against the bf16
matmul peak measured in the same run on the device (median of square matmuls at the model's
hidden size). Model FLOPs as in ``benchmarks/bench_qa.py``: N = the decoder's Linear weights;
a scored token costs 2N, a trained token 4N (the base is frozen: the backward computes input
gradients only), over real tokens (prompt + prefix, no padding). Questions are the synthetic
linked questions of ``qa.tiny`` with a random MedTok artifact; the tokenizer is the tiny test
tokenizer (byte-level BPE, so prompts run longer than under LLaMA's own tokenizer: the token
counts in the JSON are what ran). Nothing learned here means anything: it checks that every
method runs at this scale and what it costs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from qa.model import ModelOptions, build_qa_model  # noqa: E402
from qa.prefix_methods import method_names  # noqa: E402
from qa.tiny import TINY_CODES, build_tiny_medtok, build_tiny_tokenizer, tiny_questions  # noqa: E402

# LLaMA-3.1-8B (meta-llama/Llama-3.1-8B config.json), without its weights.
LLAMA_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
TINY = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, size: int, dtype=torch.bfloat16, repeats: int = 10) -> float:
    """Median FLOP/s of a square ``size`` matmul in ``dtype`` on ``device`` (after warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    inner = max(1, int(4e12 // (2 * size ** 3))) if device.type == "cuda" else max(1, int(2e9 // (2 * size ** 3)))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        times.append((time.perf_counter() - t) / inner)
    return 2 * size ** 3 / statistics.median(times)


def build_base(shape: dict, tokenizer, device: torch.device):
    """A randomly initialised LLaMA of ``shape`` in bf16, built directly on ``device``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**shape, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def decoder_linear_params(lm) -> int:
    return sum(m.weight.numel() for m in lm.model.modules() if isinstance(m, torch.nn.Linear))


def real_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum()) + int(batch["prefix_mask"].sum())


def run_method(method: str, base, tokenizer, medtok: str, items: list, args, device: torch.device,
               n_params: int, peak: float, accelerator_kwargs: dict) -> dict:
    """LoRA + ``method`` over the shared base: training steps under accelerate, then scoring."""
    from accelerate import Accelerator

    from qa.training import OptimOptions, make_optimizer

    opts = ModelOptions(prefix_mode=method, medtok=None if method == "none" else medtok, dtype="bfloat16",
                        cutoff_len=args.cutoff_len, gradient_checkpointing=args.gradient_checkpointing)
    opts.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = build_qa_model(opts, model_and_tokenizer=(base, tokenizer), seed=0)
    optimizer = make_optimizer(model, OptimOptions(lr=1e-4))
    accelerator = Accelerator(**accelerator_kwargs)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = [items[i * args.batch_size:(i + 1) * args.batch_size] for i in range(args.steps + 1)]
    step_s, tokens, losses = [], [], []
    model.train()
    for step, chunk in enumerate(batches):
        batch = {k: v.to(device) for k, v in inner.encoder.collate([inner.encoder.encode(i) for i in chunk]).items()}
        sync(device)
        t = time.perf_counter()
        loss = model(**batch)["loss"]
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        losses.append(float(loss.detach()))
        if step:  # step 0 warms up kernels and allocators
            step_s.append(time.perf_counter() - t)
            tokens.append(real_tokens(batch))
    model.eval()
    score_items = items[: args.score_n]
    encoded = [inner.encoder.encode(i) for i in score_items]
    score_tokens = real_tokens(inner.encoder.collate(encoded))
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        scored = inner.score(score_items, batch_size=args.batch_size)
    sync(device)
    score_s = time.perf_counter() - t
    train_tps = sum(tokens) / sum(step_s)
    out = {"step_s_median": statistics.median(step_s), "train_tokens_per_s": train_tps,
           "tokens_per_step": statistics.mean(tokens), "train_mfu": 4 * n_params * train_tps / peak,
           "score_questions_per_s": len(score_items) / score_s,
           "score_mfu": 2 * n_params * score_tokens / score_s / peak,
           "losses": [round(x, 4) for x in losses], "all_scored": len(scored) == len(score_items),
           "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated(device) / 2 ** 30) if device.type == "cuda" else None}
    # Give the base back without this method's LoRA layers for the next method.
    inner.lm.unload()
    accelerator.free_memory()
    del model, optimizer, inner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def deepspeed_kwargs(device: torch.device) -> dict | str:
    """accelerate kwargs for single-process DeepSpeed ZeRO-2, or why it cannot run here."""
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed"
    if device.type != "cuda":
        return "ZeRO-2 is checked on a GPU only"
    from accelerate.utils import DeepSpeedPlugin

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29517", "ACCELERATE_USE_DEEPSPEED": "true"}.items():
        os.environ.setdefault(key, value)
    plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=1, gradient_clipping=1.0)
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    return {"deepspeed_plugin": plugin}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny LLaMA on CPU (seconds): checks the script itself")
    p.add_argument("--methods", nargs="+", default=method_names(), help="prefix methods (default: every registered one)")
    p.add_argument("--steps", type=int, default=5, help="measured training steps per method (after one warm-up step)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--score_n", type=int, default=64, help="questions scored per method")
    p.add_argument("--cutoff_len", type=int, default=256)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--deepspeed", choices=("off", "on"), default="off",
                   help="on: also train the medtok method under DeepSpeed ZeRO-2 (single process)")
    p.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.score_n < 1:
        p.error("--steps, --batch_size and --score_n must be >= 1")
    unknown = sorted(set(args.methods) - set(method_names()))
    if unknown:
        p.error(f"unknown prefix method {unknown[0]!r}; choose from {', '.join(method_names())}")
    t_start = time.perf_counter()
    device = torch.device("cpu") if args.tiny or not torch.cuda.is_available() else torch.device("cuda")
    if device.type == "cpu" and not args.tiny:
        p.error("no GPU found: the 8B shape needs one; --tiny checks the script on CPU")
    shape = TINY if args.tiny else LLAMA_8B
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    tokenizer = build_tiny_tokenizer(tmp / "tok")
    medtok = str(build_tiny_medtok(tmp / "medtok", TINY_CODES, dim=64, top_k=2, codebook=96))
    n_items = (args.steps + 1) * args.batch_size
    items = tiny_questions(max(n_items, args.score_n))
    peak = matmul_peak(device, 8192 if device.type == "cuda" else 256)
    t = time.perf_counter()
    base = build_base(shape, tokenizer, device)
    build_s = time.perf_counter() - t
    n_params = decoder_linear_params(base)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "tiny": args.tiny, "shape": shape, "dtype": "bfloat16", "decoder_linear_params": n_params,
              "torch": torch.__version__, "cuda": torch.version.cuda,
              "matmul_peak_bf16_tflops": peak / 1e12, "base_build_s": build_s,
              "batch_size": args.batch_size, "steps_measured": args.steps, "score_n": args.score_n,
              "cutoff_len": args.cutoff_len, "gradient_checkpointing": args.gradient_checkpointing,
              "methods": {}}
    for method in args.methods:
        print(f"{method} ...", file=sys.stderr, flush=True)
        result["methods"][method] = run_method(method, base, tokenizer, medtok, items, args, device, n_params,
                                               peak, {})
        print(f"{method}: {json.dumps(result['methods'][method])}", file=sys.stderr, flush=True)
        save(result, args.out, t_start)  # after each method: a run cut short keeps what it measured
    if args.deepspeed == "on":
        result["deepspeed_zero2"] = zero2_run(base, tokenizer, medtok, items, args, device, n_params, peak)
    result["peak_matmul_after_tflops"] = matmul_peak(device, 8192 if device.type == "cuda" else 256) / 1e12
    out = save(result, args.out, t_start)
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return result


def save(result: dict, path: str, t_start: float) -> Path:
    result["wall_s"] = time.perf_counter() - t_start
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def zero2_run(base, tokenizer, medtok: str, items: list, args, device: torch.device, n_params: int,
              peak: float) -> dict:
    """The medtok method once more under DeepSpeed ZeRO-2 (one process). Never run on a GPU before
    the first check: a failure is recorded in the JSON instead of losing the methods' figures."""
    kwargs = deepspeed_kwargs(device)
    if isinstance(kwargs, str):
        return {"skipped": kwargs}
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the plain runs initialised it without DeepSpeed
    try:
        return run_method("medtok", base, tokenizer, medtok, items, args, device, n_params, peak, kwargs)
    except Exception as err:  # noqa: BLE001  (recorded, see docstring)
        return {"failed": f"{type(err).__name__}: {err}"[:2000]}


if __name__ == "__main__":
    main()
