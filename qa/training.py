"""QA fine-tuning under accelerate (one or several processes, CPU/GPU, optionally DeepSpeed ZeRO-2).

Trains LoRA + projector on the Intermediate tier minus a held-out validation slice (whole
option-set groups), evaluates the slice after every epoch, keeps the best checkpoint in
``output_dir/best`` (a QA checkpoint), stops early, and writes a resumable state every
``save_every_steps`` optimizer steps into ``output_dir/_resume``: a killed run started again
with the same command continues from the same step with the same data order and RNG streams.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from commons.config import require_choice, require_range, save_config, to_dict
from commons.config import starts_fresh as config_starts_fresh
from commons.errors import ConfigError, UserError
from commons.io import check_writable_dir, read_json, sha256_file, write_json, write_text
from commons.tracking import (
    CURVES,
    accelerator_kwargs,
    check_report_to,
    qa_curves,
    scalars,
    start_trackers,
)
from disease_linking.layouts import (
    AUTO,
    default_tier,
    layout_names,
    load_question_items,
    policy,
    question_file,
)
from disease_linking.questions import TIERS, MCQItem
from qa.base_model import resolve_dtype
from qa.checkpoint import best_checkpoint
from qa.data import split_by_option_set, stable_seed  # noqa: F401  (split_by_option_set: benchmarks import it here)
from qa.model import ModelOptions, PromptEncoder, QAModel, build_qa_model, resolved_options

RESUME_DIR = "_resume"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
RUN_FILES = ("train_config.yaml", "split.json", "metrics.jsonl")


@dataclass
class DataOptions:
    train_file: str | None = None  # linked JSONL (or MedDDx json); default: MedDDx.json in the data dir
    # How train_file is read: auto (each question recognised by its keys) or a registered layout;
    # a hub layout (medmcqa) without train_file downloads its hub dataset, only with allow_network.
    layout: str = field(default=AUTO, metadata={"choices": layout_names})
    allow_network: bool = False  # let a hub layout download its dataset from the Hugging Face hub
    hub_split: str = "train"  # the split a hub layout reads
    data_dir: str | None = None  # data directory (default: $MEDTOK_DATA_DIR or ../shared/data)
    # Tier trained on ("" = every tier); unset: the layout's default (MedDDx, and auto: Intermediate).
    tier: str | None = None
    val_fraction: float = 0.2  # held-out share (whole option-set groups)
    split_seed: int = 0  # seed of the train/held-out split
    limit_train: int = 0  # keep only the first N training questions (0: all), for smoke runs
    limit_val: int = 0  # keep only the first N held-out questions (0: all)
    shuffle_options: bool = True  # permute options each epoch (answer relabelled) against letter bias
    # 0: batches follow the shuffled order. N > 0: each window of N batches of the shuffled order
    # is sorted by prompt length before it is cut into batches, and the batches are shuffled:
    # far less padding (compute spent on nothing), still one fixed order per (seed, epoch).
    length_buckets: int = 0
    skip_invalid: bool = False  # leave out malformed questions (reported) instead of stopping

    def __post_init__(self):
        require_range(self, "val_fraction", 0.0, 1.0, high_open=True)
        require_range(self, "limit_train", 0)
        require_range(self, "limit_val", 0)
        require_range(self, "length_buckets", 0)
        require_choice(self, "layout", layout_names())
        if self.tier is None:
            self.tier = default_tier(self.layout)
        require_choice(self, "tier", ("", *TIERS))


@dataclass
class OptimOptions:
    lr: float = 2e-4  # AdamW learning rate (LoRA)
    projector_lr: float | None = None  # defaults to lr
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.05  # warm-up share of all steps
    epochs: int = 3  # passes over the training questions
    batch_size: int = 8  # per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient norm clip (0: none)
    max_steps: int = 0  # stop after this many optimizer steps in total (0: no limit)
    # Peak-memory cap (0: off). A batch whose rows x padded positions (prompt + prefix) exceed it
    # runs as row slices of at most this many positions, their gradients summed: the same update
    # (up to rounding and the dropout draws), with only one slice's activations alive. Long batches set a fine-tune's peak RSS.
    max_batch_tokens: int = 0

    def __post_init__(self):
        require_range(self, "lr", 0.0, low_open=True)
        require_range(self, "projector_lr", 0.0, low_open=True)
        require_range(self, "weight_decay", 0.0)
        require_range(self, "warmup_ratio", 0.0, 1.0)
        require_range(self, "epochs", 1)
        require_range(self, "batch_size", 1)
        require_range(self, "grad_accum", 1)
        require_range(self, "max_grad_norm", 0.0)
        require_range(self, "max_steps", 0)
        require_range(self, "max_batch_tokens", 0)


@dataclass
class TrainConfig:
    """Fine-tune a QA model (LoRA + MedTok prefix projector) on MedDDx Intermediate."""

    output_dir: str = "runs/qa"  # run folder (best/ is the best checkpoint)
    seed: int = 0  # seed of initialisation and data order
    eval_batch_size: int = 16  # questions per validation scoring call
    early_stop_patience: int = 2  # epochs without validation improvement (0: never stop early)
    save_every_steps: int = 50  # resumable state every N optimizer steps (and at each epoch end)
    log_every: int = 5  # metrics.jsonl record every N steps
    # DeepSpeed JSON when accelerate launches with DeepSpeed. Given here, it wins over the
    # accelerate config's deepspeed_config_file; None: that file, else ds_config.json.
    deepspeed_config: str | None = None
    resume: bool = True  # continue a run found in output_dir
    force: bool = False  # start over in an output_dir that holds a run with other settings
    # Experiment trackers through accelerate (tensorboard: event files in output_dir/logs, offline;
    # wandb, mlflow); none by default. curves.png is written either way.
    report_to: list[str] = field(default_factory=list)
    # Give freed memory back to the OS after every optimizer step (glibc malloc_trim): keeps RSS
    # at what is in use instead of letting it grow with every new batch shape.
    release_memory: bool = True
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataOptions = field(default_factory=DataOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)

    def __post_init__(self):
        require_range(self, "eval_batch_size", 1)
        require_range(self, "early_stop_patience", 0)
        require_range(self, "save_every_steps", 0)
        require_range(self, "log_every", 1)
        check_report_to(self)


# ---- data -----------------------------------------------------------------------------------------
def load_questions(opts: DataOptions) -> list[MCQItem]:
    path = question_file(opts.train_file, opts.layout, opts.data_dir)
    items, _ = load_question_items(path, opts.layout, opts.skip_invalid, opts.allow_network, opts.hub_split,
                                   flag_prefix="--data.")
    if opts.tier:
        if opts.tier not in TIERS:
            raise ConfigError(f"data.tier must be one of {', '.join(TIERS)} or empty, got {opts.tier!r}")
        untiered = items and all(i.tier is None for i in items)
        items = [i for i in items if i.tier == opts.tier]
        if untiered:  # e.g. MedMCQA: no difficulty tiers at all
            raise UserError(f"the questions of {path or opts.layout} have no tiers; pass --data.tier \"\" "
                              "to train on all of them")
    if not items:
        raise UserError(f"no {opts.tier or ''} questions with an answer in {path or opts.layout}")
    return items


def make_split(items: list[MCQItem], opts: DataOptions) -> tuple[list[MCQItem], list[MCQItem]]:
    train, val = policy(opts.layout, "--data.").split(items, opts.val_fraction, opts.split_seed)
    if opts.limit_train:
        train = train[: opts.limit_train]
    if opts.limit_val:
        val = val[: opts.limit_val]
    if not train:
        raise UserError("the training split is empty; lower data.val_fraction")
    return train, val


class EpochBatches:
    """This process's micro-batches of one epoch, built without accelerate's DataLoader wrapper.

    Order and option permutation depend only on (seed, epoch, question id); each process takes
    every world-th question of the epoch order (wrapped around so all ranks have as many), and
    the tail that does not fill a whole accumulation group is dropped, so optimizer steps align
    with epochs. A resumed run skips the batches already done and sees exactly the batches the
    interrupted one would have. (accelerate's prepared loaders pickle their sampler into the
    resume state and restore a stale copy of the dataset with it.)

    With ``length_buckets`` N > 0 the epoch order is regrouped before it is dealt out: windows
    of N global batches (batch_size x world questions each) are sorted by encoded length and
    cut into global batches, whose order is shuffled again from (seed, epoch). A batch then
    holds prompts of similar length, so little of its compute goes to padding, and every rank's
    batch of a step comes from the same global batch (similar lengths: no rank waits long for
    another).
    """

    def __init__(self, items: list[MCQItem], encoder: PromptEncoder, seed: int, shuffle: bool,
                 batch_size: int, grad_accum: int, rank: int, world: int, length_buckets: int = 0):
        self.items, self.encoder, self.seed, self.shuffle = items, encoder, seed, shuffle
        self.batch_size, self.grad_accum, self.rank, self.world = batch_size, grad_accum, rank, world
        self.length_buckets = length_buckets
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        per_rank = math.ceil(len(self.items) / self.world)
        n = math.ceil(per_rank / self.batch_size)
        return max(self.grad_accum, n - n % self.grad_accum)

    def lengths(self) -> list[int]:
        """Positions each question occupies (prompt + prefix tokens), in the original option order.

        Computed once: shuffling options moves lines of the prompt, which changes its length by a
        token or two at most; sorting only needs it roughly.
        """
        if self._lengths is None:
            self._lengths = [self.encoder.length(e) for e in self.encoder.encode_many(self.items)]
        return self._lengths

    def _bucketed(self, order: list[int], epoch: int) -> list[int]:
        """``order`` regrouped into global batches of similar length, in a shuffled batch order."""
        lengths = self.lengths()
        size = self.batch_size * self.world
        window = size * self.length_buckets
        groups: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: lengths[i])  # stable: ties keep order
            groups += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        # A short last group stays last (it is what __len__ drops first); the full ones are shuffled.
        tail = [groups.pop()] if groups and len(groups[-1]) < size else []
        random.Random(stable_seed("buckets", self.seed, epoch)).shuffle(groups)
        return [i for g in groups + tail for i in g]

    def indices(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.items)))
        random.Random(stable_seed("order", self.seed, epoch)).shuffle(order)
        per_rank = math.ceil(len(order) / self.world)
        order = (order * (self.world + 1))[: per_rank * self.world]
        if self.length_buckets > 0:
            order = self._bucketed(order, epoch)
        mine = order[self.rank::self.world]
        batches = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        while len(batches) < len(self):  # tiny sets: repeat so one accumulation group exists
            batches += batches
        return batches[: len(self)]

    def epoch(self, epoch: int, skip: int = 0):
        # The whole epoch's token ids in one Dataset.map: read from the Arrow cache when this
        # (questions, seed, epoch, tokenizer, prompt, prefix) was tokenized before, e.g. by a rerun.
        # Prefix embeddings are looked up per batch, so an epoch never holds them all at once.
        order = (self.seed, epoch) if self.shuffle else None
        rows = self.encoder.token_rows(self.items, order)
        for idx in self.indices(epoch)[skip:]:
            yield self.encoder.collate([
                self.encoder.from_tokens(self.encoder.ordered(self.items[i], order), rows["input_ids"][i],
                                         rows["label"][i], rows["truncated"][i]) for i in idx])


def row_slices(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """The batch as row slices of at most ``max_tokens`` padded positions each (the whole batch
    when it fits or ``max_tokens`` is 0), each slice's all-padding leading columns dropped."""
    rows, width = batch["input_ids"].shape[0], batch["input_ids"].shape[1] + batch["prefix_mask"].shape[1]
    per_slice = rows if max_tokens <= 0 else max(1, max_tokens // width)
    if per_slice >= rows:
        return [batch]
    slices = []
    for start in range(0, rows, per_slice):
        piece = {k: v[start:start + per_slice] for k, v in batch.items()}
        first = int(piece["attention_mask"].any(dim=0).nonzero()[0])  # left padding: real columns end the row
        piece["input_ids"], piece["attention_mask"] = piece["input_ids"][:, first:], piece["attention_mask"][:, first:]
        slices.append(piece)
    return slices


def backward_in_slices(model, batch: dict[str, torch.Tensor], accelerator, max_tokens: int) -> torch.Tensor:
    """The batch's mean loss, its gradients accumulated (see OptimOptions.max_batch_tokens).
    Each slice's mean loss is weighted by its share of the rows, so the summed gradients are the
    whole batch's; under DDP only the last slice synchronises."""
    slices = row_slices(batch, max_tokens)
    rows, total = batch["input_ids"].shape[0], None
    for i, piece in enumerate(slices):
        last = i == len(slices) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss = model(**piece)["loss"] * (piece["input_ids"].shape[0] / rows)
            accelerator.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    return total


# ---- accelerate / deepspeed -------------------------------------------------------------------------
def _using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in {"1", "true"}


def deepspeed_config_path(cfg: TrainConfig) -> Path:
    """--deepspeed_config when given, else the accelerate config's file, else ds_config.json."""
    env = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    path = Path(cfg.deepspeed_config or (env if env and env != "none" else "ds_config.json"))
    if not path.is_file():
        where = ("--deepspeed_config" if cfg.deepspeed_config
                 else "the accelerate config's deepspeed_config_file" if env and env != "none" else "the default")
        raise ConfigError(f"DeepSpeed config {path} ({where}) does not exist; pass an existing JSON file "
                          "with --deepspeed_config PATH")
    return path


def filled_deepspeed_config(path: str | Path, cfg: TrainConfig, world_size: int) -> dict:
    """ds_config.json with its "auto" values filled from the training config."""
    path = Path(path)
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"DeepSpeed config {path} is not a readable JSON file ({err})") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"DeepSpeed config {path} must hold a JSON object")
    o = cfg.optim
    fill = {
        "train_micro_batch_size_per_gpu": o.batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": o.batch_size * o.grad_accum * world_size,
        "gradient_clipping": o.max_grad_norm,
    }
    for key, value in fill.items():
        if ds.get(key) == "auto":
            ds[key] = value
    dtype = resolve_dtype(cfg.model.dtype)
    for prec, on in (("bf16", dtype == "bfloat16"), ("fp16", dtype == "float16")):
        if isinstance(ds.get(prec), dict) and ds[prec].get("enabled") == "auto":
            ds[prec]["enabled"] = on
    zero = ds.get("zero_optimization", {})
    for key in [k for k, v in zero.items() if v == "auto"]:
        zero.pop(key)  # bucket sizes: DeepSpeed's defaults fit small and large models
    return ds


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    handlers = []
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or _using_deepspeed()
    if distributed and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo"))  # no NCCL on CPU
    kwargs = {}
    if _using_deepspeed():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        ds = filled_deepspeed_config(deepspeed_config_path(cfg), cfg, world)
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
    else:
        kwargs["gradient_accumulation_steps"] = cfg.optim.grad_accum
    return Accelerator(kwargs_handlers=handlers, **kwargs, **accelerator_kwargs(cfg.report_to, cfg.output_dir))


# ---- optimisation -------------------------------------------------------------------------------------
def make_optimizer(model: QAModel, o: OptimOptions) -> torch.optim.Optimizer:
    lora = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projector.")]
    proj = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("projector.")]
    groups = [{"params": lora, "lr": o.lr}]
    if proj:
        groups.append({"params": proj, "lr": o.projector_lr or o.lr})
    return torch.optim.AdamW(groups, weight_decay=o.weight_decay)


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS.

    Activations are freed after every backward, but their sizes change with every batch (prompt
    lengths differ), and glibc keeps such freed chunks in its heap: RSS then grew step after
    step; trimming after every step keeps it flat (peak RSS per run: benchmarks/bench_memory.py,
    benchmarks/results/memory.json).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def current_rss_gib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


# ---- bookkeeping --------------------------------------------------------------------------------------
class MetricsLog:
    """metrics.jsonl, appended by the main process; trimmed to the resumed step on resume."""

    def __init__(self, path: Path, active: bool, tracker=None):
        self.path, self.active, self.tracker = path, active, tracker  # tracker: an Accelerator with log_with

    def trim_after(self, step: int) -> None:
        if not self.active or not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        if self.active:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.tracker is not None and record.get("event") in ("train", "eval"):
                prefix = "train/" if record["event"] == "train" else "eval/"
                values = {prefix + k: v for k, v in scalars(record).items() if k != "best"}
                self.tracker.log(values, step=record["step"])


class TrainWindow:
    """Loss and tokens since the last ``train`` record of metrics.jsonl."""

    def __init__(self, step: int):
        self.logged_step = step
        self._reset()

    def _reset(self) -> None:
        self.t0, self.tokens, self.loss_sum, self.n = time.perf_counter(), 0, 0.0, 0

    def add(self, loss: float, tokens: int) -> None:
        self.loss_sum, self.tokens, self.n = self.loss_sum + loss, self.tokens + tokens, self.n + 1

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.n, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.t0, 1e-9)

    def unlogged(self, step: int) -> bool:
        """True when optimizer steps up to ``step`` have no record yet."""
        return self.n > 0 and step > self.logged_step

    def record(self, state, lr: float) -> dict:
        """The ``train`` record of this window (then a new window starts)."""
        rec = {"event": "train", "step": state.global_step, "epoch": state.epoch + 1, "loss": self.loss, "lr": lr,
               "tokens_per_s": self.tokens_per_s, "peak_rss_gib": peak_rss_gib()}
        self.logged_step = state.global_step
        self._reset()
        return rec


def evaluate(model: QAModel, items: list[MCQItem], batch_size: int) -> dict:
    """Accuracy and mean negative log-probability of the right letter (option-letter softmax)."""
    if not items:
        return {"val_acc": None, "val_nll": None, "n_val": 0}
    scores = model.score(items, batch_size)
    correct = sum(s["pred"] == it.answer for s, it in zip(scores, items, strict=True))
    nll = sum(-math.log(max(s["probs"][it.answer], 1e-12)) for s, it in zip(scores, items, strict=True)) / len(items)
    with_codes = sum(s["n_codes"] > 0 for s in scores)
    return {"val_acc": correct / len(items), "val_nll": nll, "n_val": len(items), "val_with_codes": with_codes}


def _is_better(metrics: dict, best: dict | None) -> bool:
    if best is None:
        return True
    return (metrics["val_acc"], -metrics["val_nll"]) > (best["val_acc"], -best["val_nll"])


@dataclass
class TrainerState:
    epoch: int = 0
    batches_done: int = 0  # micro-batches of `epoch` already consumed
    global_step: int = 0  # optimizer steps
    best: dict | None = None
    bad_epochs: int = 0
    finished: bool = False


def _rng_state() -> dict:
    """RNG streams (dropout, python) as JSON: accelerate's own pickle of them does not load with
    weights_only=True, and it then silently skips them."""
    state = {"torch": torch.get_rng_state().tolist(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _save_resume(accelerator, out: Path, state: TrainerState) -> None:
    """Resumable state (trainable weights, optimizer, scheduler, RNG), swapped in atomically."""
    final = out / RESUME_DIR
    tmp = out / f".{RESUME_DIR}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    kwargs = {"exclude_frozen_parameters": True} if _using_deepspeed() else {}
    accelerator.save_state(str(tmp), **kwargs)
    write_json(tmp / f"rng_{accelerator.process_index}.json", _rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, state.__dict__)
        write_json(tmp / MANIFEST, _folder_digests(tmp))
        old = out / f".{RESUME_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _folder_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def _verify_resume_state(path: Path) -> None:
    """The resume state must be byte for byte what this trainer saved: accelerate/DeepSpeed load
    parts of it with torch.load(weights_only=False), which can run code from a tampered file."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise UserError(f"resume state {path} has no {MANIFEST} (written by an older version or damaged); "
                          "delete the folder to start over, or pass --resume false")
    try:
        expected = read_json(manifest)
    except (ValueError, UnicodeDecodeError):
        expected = None
    if expected != _folder_digests(path):
        raise UserError(f"resume state {path} differs from what was saved (damaged or edited); delete the "
                          "folder to start over, or pass --resume false")


def _load_resume(accelerator, out: Path) -> TrainerState | None:
    path = out / RESUME_DIR
    if not (path / STATE_FILE).is_file():
        return None
    _verify_resume_state(path)
    kwargs = {"load_module_strict": False} if _using_deepspeed() else {"strict": False}
    accelerator.load_state(str(path), **kwargs)
    rng = path / f"rng_{accelerator.process_index}.json"
    if rng.is_file():
        _set_rng_state(read_json(rng))
    return TrainerState(**read_json(path / STATE_FILE))


def _register_trainable_only_saving(accelerator, trainable: set[str]) -> None:
    """Resume states hold only trainable weights: the frozen base (GBs for 8B) is reloaded anyway."""

    def save_hook(models, weights, output_dir):
        for i, w in enumerate(weights):
            weights[i] = {k: v for k, v in w.items() if k in trainable}

    accelerator.register_save_state_pre_hook(save_hook)


def split_record(opts: DataOptions, train: list[MCQItem], val: list[MCQItem]) -> dict:
    """What ``split.json`` holds: the question ids trained on and held out (eval excludes them /
    restricts Intermediate to them). Every model trained on MedDDx (the fine-tunes, the
    embeddings-only references of qa.reference) writes this record."""
    return {"tier": opts.tier, "val_fraction": opts.val_fraction, "split_seed": opts.split_seed,
            "split_by": "option_set", "train": [i.id for i in train], "val": [i.id for i in val]}


def _write_run_files(out: Path, cfg: TrainConfig, train: list[MCQItem], val: list[MCQItem]) -> None:
    save_config(cfg, out / "train_config.yaml")
    write_json(out / "split.json", split_record(cfg.data, train, val))


def _run_files(out: Path) -> dict[str, Path]:
    return {name: out / name for name in RUN_FILES}


def starts_fresh(cfg: TrainConfig, out: Path) -> bool:
    """Whether ``out`` must be cleared before training (see :func:`commons.config.starts_fresh`)."""
    return config_starts_fresh(cfg, out / "train_config.yaml", out)


def preflight_checks(cfg: TrainConfig) -> None:
    """What can fail before training processes start: output folder, run-folder conflicts,
    the question file, the method's MedTok artifact, an explicit DeepSpeed config."""
    from qa.model import make_method

    cfg = dataclasses.replace(cfg, model=resolved_options(cfg.model, cfg.seed))
    check_writable_dir(cfg.output_dir, "--output_dir")
    starts_fresh(cfg, Path(cfg.output_dir))
    make_split(load_questions(cfg.data), cfg.data)
    make_method(cfg.model)
    if cfg.deepspeed_config:
        deepspeed_config_path(cfg)


def clear_run(out: Path) -> None:
    """Remove what a previous run left in ``out`` (only the trainer's own files)."""
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)
    shutil.rmtree(best_checkpoint(out), ignore_errors=True)
    for name in (*RUN_FILES, CURVES):
        (out / name).unlink(missing_ok=True)


# ---- the loop -----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Run (or resume) training; returns the best QA checkpoint folder. ``on_step(global_step)``
    is called after each optimizer step (tests use it to interrupt a run)."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    cfg = dataclasses.replace(cfg, model=resolved_options(cfg.model, cfg.seed))  # saved = what runs
    out = Path(cfg.output_dir)
    check_writable_dir(out, "--output_dir")
    fresh = starts_fresh(cfg, out)  # before anything is written: a conflicting folder is an error
    if cfg.deepspeed_config:
        deepspeed_config_path(cfg)  # given but missing is an error even when DeepSpeed is not used
    accelerator = make_accelerator(cfg)
    if cfg.optim.max_batch_tokens and _using_deepspeed():
        raise ConfigError("optim.max_batch_tokens does not work under DeepSpeed (its engine steps after every "
                          "backward); set it to 0 and use optim.grad_accum with a smaller optim.batch_size")
    set_seed(cfg.seed)
    items = load_questions(cfg.data)
    train_items, val_items = make_split(items, cfg.data)
    model = build_qa_model(cfg.model, lora=True, seed=cfg.seed)  # checks artifact and base model
    if accelerator.is_main_process:
        if fresh:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_run_files(out, cfg, train_items, val_items)
    accelerator.wait_for_everyone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    world = accelerator.num_processes
    grad_accum = accelerator.gradient_accumulation_steps
    batches = EpochBatches(train_items, model.encoder, cfg.seed, cfg.data.shuffle_options, cfg.optim.batch_size,
                           grad_accum, accelerator.process_index, world, cfg.data.length_buckets)
    optimizer = make_optimizer(model, cfg.optim)
    steps_per_epoch = len(batches) // grad_accum
    total = steps_per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps:
        total = min(total, cfg.optim.max_steps)
    scheduler = linear_schedule(optimizer, int(cfg.optim.warmup_ratio * total), total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    _register_trainable_only_saving(accelerator, trainable)

    log = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process, accelerator if cfg.report_to else None)
    start_trackers(accelerator, cfg.report_to, "qa", to_dict(cfg))
    state = (_load_resume(accelerator, out) if cfg.resume else None) or TrainerState()
    accelerator.step = state.global_step * grad_accum  # accumulation phase (saved only at boundaries)
    log.trim_after(state.global_step)  # a kill before the first save leaves lines of a run that restarts
    if state.global_step:
        log.write({"event": "resume", "step": state.global_step, "epoch": state.epoch})
    if accelerator.is_main_process:
        print(f"train {len(train_items)} / val {len(val_items)} questions ({cfg.data.tier}, split by option set); "
              f"{steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs on {world} process(es), "
              f"{accelerator.distributed_type.value} on {accelerator.device}"
              + (f"; resuming at step {state.global_step}" if state.global_step else ""), file=sys.stderr)

    unwrapped: QAModel = accelerator.unwrap_model(model)
    stop = state.finished
    while not stop and state.epoch < cfg.optim.epochs:
        model.train()
        bar = tqdm(total=steps_per_epoch, initial=state.batches_done // grad_accum,
                   desc=f"epoch {state.epoch + 1}/{cfg.optim.epochs}", disable=not accelerator.is_main_process,
                   dynamic_ncols=True)
        window, epoch_start = TrainWindow(state.global_step), time.perf_counter()
        for batch in batches.epoch(state.epoch, skip=state.batches_done):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            # Dropout draws from a stream fixed by (seed, rank, position in training), so a resumed run
            # repeats the interrupted one exactly, whatever else consumed random numbers meanwhile
            # (creating a DataLoader iterator does).
            torch.manual_seed(stable_seed("batch", cfg.seed, accelerator.process_index, state.epoch,
                                          state.batches_done) % 2**63)
            with accelerator.accumulate(model):
                loss = backward_in_slices(model, batch, accelerator, cfg.optim.max_batch_tokens)
                if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0 and not _using_deepspeed():
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_done += 1
            window.add(float(loss.detach()), int(batch["attention_mask"].sum() + batch["prefix_mask"].sum()) * world)
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            if cfg.release_memory:
                release_free_memory()
            bar.update(1)
            bar.set_postfix(loss=f"{window.loss:.3f}", tok_s=f"{window.tokens_per_s:.0f}")
            if state.global_step % cfg.log_every == 0:
                log.write(window.record(state, scheduler.get_last_lr()[0]))
            if cfg.optim.max_steps and state.global_step >= cfg.optim.max_steps:
                stop = True
            if cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0 and not stop:
                _save_resume(accelerator, out, state)
            if on_step is not None:
                on_step(state.global_step)
            if stop:
                break
        if window.unlogged(state.global_step):
            # An epoch's (and so the run's) last step is logged even off the log_every grid: a short
            # fine-tune still draws a loss curve.
            log.write(window.record(state, scheduler.get_last_lr()[0]))
        bar.close()
        epoch_time = time.perf_counter() - epoch_start
        epoch_done = not stop or state.batches_done >= len(batches)
        metrics = evaluate(unwrapped, val_items, cfg.eval_batch_size)
        if cfg.release_memory:
            release_free_memory()
        record = {"event": "eval", "step": state.global_step, "epoch": state.epoch + 1,
                  "epoch_complete": epoch_done, "epoch_time_s": epoch_time, "peak_rss_gib": peak_rss_gib(),
                  "rss_gib": current_rss_gib(), **metrics}
        improved = metrics["val_acc"] is None or _is_better(metrics, state.best)
        if improved:
            state.best, state.bad_epochs = record, 0
        else:
            state.bad_epochs += 1
        record["best"] = improved
        log.write(record)
        if accelerator.is_main_process:
            print(f"epoch {state.epoch + 1}: val_acc={metrics['val_acc']} val_nll={metrics['val_nll']} "
                  f"({epoch_time:.0f}s, peak RSS {peak_rss_gib():.2f} GiB)", file=sys.stderr)
            if improved:
                unwrapped.save_checkpoint(best_checkpoint(out), _run_files(out))
        accelerator.wait_for_everyone()
        if epoch_done:
            state.epoch += 1
            state.batches_done = 0
        if cfg.early_stop_patience and state.bad_epochs >= cfg.early_stop_patience:
            log.write({"event": "early_stop", "step": state.global_step, "epoch": state.epoch})
            stop = True
        state.finished = stop or state.epoch >= cfg.optim.epochs
        _save_resume(accelerator, out, state)
    best = best_checkpoint(out)
    if accelerator.is_main_process:
        if best.is_dir():  # final copies of the run files (metrics now complete)
            for name, src in _run_files(out).items():
                if src.is_file():
                    shutil.copyfile(src, best / name)
        qa_curves(out / "metrics.jsonl", out / CURVES)  # loss, lr, validation accuracy of the whole run
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return best


def summary(cfg: TrainConfig) -> dict:
    return to_dict(cfg)
