"""QA fine-tuning under accelerate (one or several processes, CPU/GPU, optionally DeepSpeed ZeRO-2).

Trains LoRA + projector on the Intermediate tier minus a held-out validation slice (whole
option-set groups), evaluates the slice after every epoch, keeps the best checkpoint in
``output_dir/best`` (a QA checkpoint), stops early, and writes a resumable state every
``save_every_steps`` optimizer steps into ``output_dir/_resume``: a killed run started again
with the same command continues from the same step with the same data order and RNG streams.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from commons.config import require_choice, require_range, to_dict
from commons.errors import ConfigError, UserError
from commons.io import check_writable_dir, write_json
from commons.runident import save_run_config as save_config  # the config with its inputs' digests
from commons.runident import starts_fresh as config_starts_fresh  # by content, not by path
from commons.tracking import (
    CURVES,
    check_report_to,
    qa_curves,
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
from qa.accelerate_setup import (  # noqa: F401  (re-exported: tests and benchmarks import them here)
    deepspeed_config_path,
    filled_deepspeed_config,
    make_accelerator,
    using_deepspeed,
)
from qa.batches import EpochBatches, backward_in_slices, row_slices  # noqa: F401  (re-exported)
from qa.checkpoint import best_checkpoint
from qa.data import split_by_option_set, stable_seed  # noqa: F401  (split_by_option_set: benchmarks import it here)
from qa.memory import current_rss_gib, peak_rss_gib, release_free_memory
from qa.metrics_log import MetricsLog, TrainWindow
from qa.model import ModelOptions, QAModel, build_qa_model, resolved_options
from qa.resume import (  # noqa: F401  (RESUME_DIR re-exported)
    RESUME_DIR,
    TrainerState,
    load_resume,
    register_trainable_only_saving,
    save_resume,
)

RUN_FILES = ("train_config.yaml", "train_config.inputs.json", "split.json", "metrics.jsonl")


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
    # False: only the prefix module trains; the LLM and its LoRA adapter (zero-initialised, so the
    # identity) stay as loaded. The frozen-LLM variant of the channel check (docs/kgqa.md).
    train_lm: bool = True

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


# ---- accelerate / deepspeed -------------------------------------------------------------------------
# ---- optimisation -------------------------------------------------------------------------------------
def make_optimizer(model: QAModel, o: OptimOptions) -> torch.optim.Optimizer:
    lora = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projector.")]
    proj = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("projector.")]
    groups = [{"params": lora, "lr": o.lr}] if lora else []
    if proj:
        groups.append({"params": proj, "lr": o.projector_lr or o.lr})
    return torch.optim.AdamW(groups, weight_decay=o.weight_decay)


def freeze_lm(model: QAModel) -> None:
    """Train the prefix module only: the LoRA adapter keeps its identity initialisation."""
    if model.projector is None:
        raise UserError(f"optim.train_lm false trains the prefix module only, and prefix_mode "
                        f"{model.options.prefix_mode} has none; choose a method with a prefix module")
    for name, p in model.named_parameters():
        if not name.startswith("projector."):
            p.requires_grad_(False)


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- bookkeeping --------------------------------------------------------------------------------------
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


def split_record(opts: DataOptions, train: list[MCQItem], val: list[MCQItem]) -> dict:
    """What ``split.json`` holds: the question ids trained on and held out (eval excludes them /
    restricts Intermediate to them). Every model trained on MedDDx (the fine-tunes, the
    embeddings-only references of qa.reference) writes this record."""
    return {"tier": opts.tier, "val_fraction": opts.val_fraction, "split_seed": opts.split_seed,
            "split_by": policy(opts.layout).split_by, "train": [i.id for i in train], "val": [i.id for i in val]}


def _write_run_files(out: Path, cfg: TrainConfig, train: list[MCQItem], val: list[MCQItem]) -> None:
    save_config(cfg, out / "train_config.yaml")
    write_json(out / "split.json", split_record(cfg.data, train, val))


def _run_files(out: Path) -> dict[str, Path]:
    return {name: out / name for name in RUN_FILES}


def starts_fresh(cfg: TrainConfig, out: Path) -> bool:
    """Whether ``out`` must be cleared before training (see :func:`commons.runident.starts_fresh`)."""
    return config_starts_fresh(cfg, out / "train_config.yaml", out)


def preflight_checks(cfg: TrainConfig) -> None:
    """What can fail before training processes start: output folder, run-folder conflicts,
    the question file, the method's MedTok artifact, an explicit DeepSpeed config."""
    from qa.model import make_method

    cfg = dataclasses.replace(cfg, model=resolved_options(cfg.model, cfg.seed))
    check_writable_dir(cfg.output_dir, "--output_dir")
    starts_fresh(cfg, Path(cfg.output_dir))
    train_items, _ = make_split(load_questions(cfg.data), cfg.data)
    check_accumulation(cfg, len(train_items), 1)
    make_method(cfg.model)
    if cfg.deepspeed_config:
        deepspeed_config_path(cfg)


def check_accumulation(cfg: TrainConfig, n_train: int, world: int) -> None:
    """One accumulation group must fit in an epoch: a larger optim.grad_accum would repeat the few
    batches there are until the group fills (a million times for grad_accum 1000000: a hang)."""
    batches = math.ceil(math.ceil(n_train / world) / cfg.optim.batch_size)
    if cfg.optim.grad_accum > batches:
        raise ConfigError(f"optim.grad_accum {cfg.optim.grad_accum} exceeds the {batches} batch(es) of an epoch "
                          f"({n_train} training questions, optim.batch_size {cfg.optim.batch_size}, {world} "
                          f"process(es)); use optim.grad_accum <= {batches} or a smaller optim.batch_size")


def clear_run(out: Path) -> None:
    """Remove what a previous run left in ``out`` (only the trainer's own files)."""
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)
    shutil.rmtree(best_checkpoint(out), ignore_errors=True)
    for name in (*RUN_FILES, CURVES):
        (out / name).unlink(missing_ok=True)


# ---- the loop -----------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What one training run holds between its phases (see :func:`train`)."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    model: Any  # the prepared (possibly wrapped) QAModel
    unwrapped: QAModel
    optimizer: Any
    scheduler: Any
    batches: EpochBatches
    log: MetricsLog
    state: TrainerState
    val_items: list[MCQItem]
    steps_per_epoch: int


def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Run (or resume) training; returns the best QA checkpoint folder. ``on_step(global_step)``
    is called after each optimizer step (tests use it to interrupt a run). One writer per run
    folder: the first process of a launch holds its lock (a launcher's lock is inherited)."""
    from commons.runlock import run_lock

    check_writable_dir(cfg.output_dir, "--output_dir")
    if os.environ.get("RANK", "0") != "0":
        return _train(cfg, on_step)
    with run_lock(cfg.output_dir, "medtok-qa finetune"):
        return _train(cfg, on_step)


def _train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> Path:
    run = _start(cfg)
    stop = run.state.finished
    while not stop and run.state.epoch < run.cfg.optim.epochs:
        epoch_start = time.perf_counter()
        stop = _train_epoch(run, on_step)
        stop = _end_epoch(run, stop, time.perf_counter() - epoch_start)
    return _finish(run)


def _start(cfg: TrainConfig) -> _Run:
    """Checks, data, model, optimizer and the resumed state; the run folder written. The order of
    the seeded steps (set_seed, split, model init) is what the pinned losses of the tests rest on."""
    from accelerate.utils import set_seed

    cfg = dataclasses.replace(cfg, model=resolved_options(cfg.model, cfg.seed))  # saved = what runs
    out = Path(cfg.output_dir)
    check_writable_dir(out, "--output_dir")
    fresh = starts_fresh(cfg, out)  # before anything is written: a conflicting folder is an error
    if cfg.deepspeed_config:
        deepspeed_config_path(cfg)  # given but missing is an error even when DeepSpeed is not used
    accelerator = make_accelerator(cfg)
    if cfg.optim.max_batch_tokens and using_deepspeed():
        raise ConfigError("optim.max_batch_tokens does not work under DeepSpeed (its engine steps after every "
                          "backward); set it to 0 and use optim.grad_accum with a smaller optim.batch_size")
    set_seed(cfg.seed)
    train_items, val_items = make_split(load_questions(cfg.data), cfg.data)
    check_accumulation(cfg, len(train_items), accelerator.num_processes)
    model = build_qa_model(cfg.model, lora=True, seed=cfg.seed)  # checks artifact and base model
    if not cfg.optim.train_lm:
        freeze_lm(model)
    if accelerator.is_main_process:
        if fresh:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_run_files(out, cfg, train_items, val_items)
    accelerator.wait_for_everyone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    grad_accum = accelerator.gradient_accumulation_steps
    batches = EpochBatches(train_items, model.encoder, cfg.seed, cfg.data.shuffle_options, cfg.optim.batch_size,
                           grad_accum, accelerator.process_index, accelerator.num_processes, cfg.data.length_buckets)
    optimizer = make_optimizer(model, cfg.optim)
    steps_per_epoch = len(batches) // grad_accum
    total = steps_per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps:
        total = min(total, cfg.optim.max_steps)
    scheduler = linear_schedule(optimizer, int(cfg.optim.warmup_ratio * total), total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_trainable_only_saving(accelerator, trainable)

    log = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process, accelerator if cfg.report_to else None)
    start_trackers(accelerator, cfg.report_to, "qa", to_dict(cfg))
    state = (load_resume(accelerator, out) if cfg.resume else None) or TrainerState()
    accelerator.step = state.global_step * grad_accum  # accumulation phase (saved only at boundaries)
    log.trim_after(state.global_step)  # a kill before the first save leaves lines of a run that restarts
    if state.global_step:
        log.write({"event": "resume", "step": state.global_step, "epoch": state.epoch})
    if accelerator.is_main_process:
        print(f"train {len(train_items)} / val {len(val_items)} questions ({cfg.data.tier}, split by "
              f"{policy(cfg.data.layout).split_by}); {steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs on "
              f"{accelerator.num_processes} process(es), {accelerator.distributed_type.value} on {accelerator.device}"
              + (f"; resuming at step {state.global_step}" if state.global_step else ""), file=sys.stderr)
    return _Run(cfg, out, accelerator, model, accelerator.unwrap_model(model), optimizer, scheduler, batches, log,
                state, val_items, steps_per_epoch)


def _train_epoch(run: _Run, on_step: Callable[[int], None] | None) -> bool:
    """The rest of the current epoch (from ``state.batches_done``); True when training must stop."""
    from tqdm.auto import tqdm

    cfg, acc, state = run.cfg, run.accelerator, run.state
    run.model.train()
    bar = tqdm(total=run.steps_per_epoch, initial=state.batches_done // acc.gradient_accumulation_steps,
               desc=f"epoch {state.epoch + 1}/{cfg.optim.epochs}", disable=not acc.is_main_process, dynamic_ncols=True)
    window, stop = TrainWindow(state.global_step), False
    for batch in run.batches.epoch(state.epoch, skip=state.batches_done):
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        # Dropout draws from a stream fixed by (seed, rank, position in training), so a resumed run
        # repeats the interrupted one exactly, whatever else consumed random numbers meanwhile
        # (creating a DataLoader iterator does).
        torch.manual_seed(stable_seed("batch", cfg.seed, acc.process_index, state.epoch, state.batches_done) % 2**63)
        with acc.accumulate(run.model):
            loss = backward_in_slices(run.model, batch, acc, cfg.optim.max_batch_tokens)
            if acc.sync_gradients and cfg.optim.max_grad_norm > 0 and not using_deepspeed():
                acc.clip_grad_norm_(run.model.parameters(), cfg.optim.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        state.batches_done += 1
        tokens = int(batch["attention_mask"].sum() + batch["prefix_mask"].sum()) * acc.num_processes
        window.add(float(loss.detach()), tokens)
        if not acc.sync_gradients:
            continue
        state.global_step += 1
        if cfg.release_memory:
            release_free_memory()
        bar.update(1)
        bar.set_postfix(loss=f"{window.loss:.3f}", tok_s=f"{window.tokens_per_s:.0f}")
        if state.global_step % cfg.log_every == 0:
            run.log.write(window.record(state, run.scheduler.get_last_lr()[0]))
        stop = bool(cfg.optim.max_steps and state.global_step >= cfg.optim.max_steps)
        if cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0 and not stop:
            save_resume(acc, run.out, state)
        if on_step is not None:
            on_step(state.global_step)
        if stop:
            break
    if window.unlogged(state.global_step):
        # An epoch's (and so the run's) last step is logged even off the log_every grid: a short
        # fine-tune still draws a loss curve.
        run.log.write(window.record(state, run.scheduler.get_last_lr()[0]))
    bar.close()
    return stop


def _end_epoch(run: _Run, stop: bool, epoch_time: float) -> bool:
    """Validation, the best checkpoint, early stopping and the resume state after an epoch (or
    after max_steps cut one short); True when training must stop."""
    cfg, acc, state = run.cfg, run.accelerator, run.state
    epoch_done = not stop or state.batches_done >= len(run.batches)
    metrics = evaluate(run.unwrapped, run.val_items, cfg.eval_batch_size)
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
    run.log.write(record)
    if acc.is_main_process:
        print(f"epoch {state.epoch + 1}: val_acc={metrics['val_acc']} val_nll={metrics['val_nll']} "
              f"({epoch_time:.0f}s, peak RSS {peak_rss_gib():.2f} GiB)", file=sys.stderr)
        if improved:
            run.unwrapped.save_checkpoint(best_checkpoint(run.out), _run_files(run.out))
    acc.wait_for_everyone()
    if epoch_done:
        state.epoch += 1
        state.batches_done = 0
    if cfg.early_stop_patience and state.bad_epochs >= cfg.early_stop_patience:
        run.log.write({"event": "early_stop", "step": state.global_step, "epoch": state.epoch})
        stop = True
    state.finished = stop or state.epoch >= cfg.optim.epochs
    save_resume(acc, run.out, state)
    return stop


def _finish(run: _Run) -> Path:
    """Final copies of the run files beside the best checkpoint, the curves; returns the checkpoint."""
    best = best_checkpoint(run.out)
    if run.accelerator.is_main_process:
        if best.is_dir():  # final copies of the run files (metrics now complete)
            for name, src in _run_files(run.out).items():
                if src.is_file():
                    shutil.copyfile(src, best / name)
        qa_curves(run.out / "metrics.jsonl", run.out / CURVES)  # loss, lr, validation accuracy of the whole run
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return best


def summary(cfg: TrainConfig) -> dict:
    return to_dict(cfg)
