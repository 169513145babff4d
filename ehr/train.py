"""``medtok-qa ehr pretrain`` / ``ehr finetune``: EhrMamba training on a prepared EHR folder.

    pretrain   next-token prediction on the training subjects' timelines
    finetune   multitask prompted finetuning (MPF): every task's training samples, task token first and
               last, one binary head; starts from a pretrain run's weights (``--init``) or from scratch

Resume: every ``save_every`` steps the model, optimizer and step go to ``output_dir/_resume``; a
killed run started again continues from there and ends with the same weights as an uninterrupted
run (the batch order is drawn per epoch from the seed, dropout is reseeded per step from
(seed, step), so nothing depends on the process's history). Optimizer state is read with
``torch.load(weights_only=True)``: tensors and plain containers only, no code.
Output: ``model.safetensors``, ``config.yaml``, ``losses.jsonl`` (one line per step).

Several processes: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m recipes.ehr
pretrain ...`` (or ``--config_file configs/accelerate/cpu_multi.yaml``): every process draws the same
step's batch, takes its share (``idx[rank::world]``), and DistributedDataParallel averages the
gradients; the main process writes the log, the resume state and the model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from commons.config import require_range
from commons.errors import ConfigError, DataFileError
from commons.io import atomic_dir, read_json
from commons.runident import save_run_config as save_config  # the config with its inputs' digests
from commons.runident import starts_fresh  # a run is its inputs' content, wherever its folder is
from ehr.model import EhrModel, ModelOptions, collate
from ehr.sequences import Vocab

RESUME_DIR = "_resume"


@dataclass
class TrainOptions:
    """The optimisation."""

    steps: int = 200  # optimizer steps
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    save_every: int = 50  # steps between resume states
    threads: int = 2  # torch CPU threads (the CI machine has 2 cores)

    def __post_init__(self):
        require_range(self, "steps", 1)
        require_range(self, "batch_size", 1)
        require_range(self, "lr", 0, low_open=True)
        require_range(self, "weight_decay", 0)
        require_range(self, "save_every", 1)
        require_range(self, "threads", 1)


@dataclass
class EhrTrainConfig:
    """Train EhrMamba (pretraining or multitask prompted finetuning) on a prepared EHR folder."""

    data: str = ""  # a prepared folder (`medtok-qa ehr data` output: samples.parquet, vocab.json)
    output_dir: str = "runs/ehr/run"
    stage: Literal["pretrain", "finetune"] = "pretrain"
    init: str | None = None  # finetune: a pretrain run folder to start from
    tasks: list[str] = field(default_factory=list)  # finetune: these tasks (empty: every task with samples)
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    resume: bool = True  # continue a run found in output_dir
    force: bool = False  # discard a run with other settings found in output_dir


def load_prepared(data: str | Path) -> tuple[pd.DataFrame, Vocab]:
    data = Path(data)
    if not (data / "samples.parquet").is_file() or not (data / "vocab.json").is_file():
        raise DataFileError(f"{data} is not a prepared EHR folder (no samples.parquet / vocab.json); "
                            "run `medtok-qa ehr data --output_dir DIR` first")
    return pd.read_parquet(data / "samples.parquet"), Vocab.from_dict(read_json(data / "vocab.json"))


def training_samples(samples: pd.DataFrame, cfg: EhrTrainConfig) -> list[dict]:
    if cfg.stage == "pretrain":
        rows = samples[(samples["kind"] == "pretrain") & (samples["split"] == "train")]
    else:
        rows = samples[(samples["kind"] == "task") & (samples["split"] == "train")]
        if cfg.tasks:
            unknown = sorted(set(cfg.tasks) - set(rows["task"]))
            if unknown:
                raise ConfigError(f"task(s) {', '.join(unknown)} have no training samples in {cfg.data}; "
                                  f"tasks there: {', '.join(sorted(set(rows['task'])))}")
            rows = rows[rows["task"].isin(cfg.tasks)]
    if rows.empty:
        raise ConfigError(f"{cfg.data} has no {cfg.stage} training samples")
    return rows.to_dict("records")


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The sample indices of optimizer step ``step``: epochs of a seeded permutation, drawn per epoch."""
    per_epoch = max(n // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * batch_size:(k + 1) * batch_size] if n >= batch_size else order


def build_model(vocab: Vocab, opts: ModelOptions, seed: int) -> EhrModel:
    torch.manual_seed(seed)
    return EhrModel(vocab, opts)


def _accelerator():
    """accelerate's Accelerator (one process: a no-op wrapper). Each stage leaves one of the two heads
    unused, so DDP must be told to expect unused parameters."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _save_resume(out: Path, model, optimizer, step: int) -> None:
    with atomic_dir(out / RESUME_DIR) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))


def _load_resume(out: Path, model, optimizer) -> int:
    path = out / RESUME_DIR
    if not (path / "state.json").is_file():
        return 0
    model.load_state_dict(load_file(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return int(json.loads((path / "state.json").read_text())["step"])


def _trim_log(log: Path, step: int) -> None:
    """Keep the loss lines of the steps the resumed state has done (a killed run may have logged more)."""
    if log.is_file():
        lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] < step]
        log.write_text("".join(ln + "\n" for ln in lines))


def train(cfg: EhrTrainConfig, stop_after: int | None = None) -> Path:
    """Run (or resume) training; returns the output folder. ``stop_after``: stop once that many steps
    are done, without the final save (what a kill does; the tests use it)."""
    out = Path(cfg.output_dir)
    samples, vocab = load_prepared(cfg.data)
    records = training_samples(samples, cfg)
    torch.set_num_threads(cfg.train.threads)
    fresh = starts_fresh(cfg, out / "config.yaml", out)
    if not fresh and (out / "model.safetensors").is_file():
        return out  # finished with these settings: nothing to do
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    model = build_model(vocab, cfg.model, cfg.train.seed)
    if cfg.init and cfg.stage == "finetune":
        init = Path(cfg.init) / "model.safetensors"
        if not init.is_file():
            raise DataFileError(f"--init {cfg.init} holds no model.safetensors; pass a finished pretrain run folder")
        missing, unexpected = model.load_state_dict(load_file(init), strict=False)
        if unexpected:
            raise DataFileError(f"--init {cfg.init} does not match this model ({unexpected[0]} ...); pretrain "
                                "with the same --model options")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)
    step = _load_resume(out, model, optimizer)
    acc = _accelerator()
    ddp_model, optimizer = acc.prepare(model, optimizer)  # model itself stays the unwrapped module
    rank, world = acc.process_index, acc.num_processes
    if cfg.train.batch_size < world:
        raise ConfigError(f"--train.batch_size {cfg.train.batch_size} is smaller than the {world} processes; "
                          "give every process at least one sequence")
    log = out / "losses.jsonl"
    if acc.is_main_process:
        _trim_log(log, step)
    model.train()
    with open(log, "a", encoding="utf-8") if acc.is_main_process else _NoLog() as f:
        while step < cfg.train.steps:
            if stop_after is not None and step >= stop_after:
                return out
            idx = batch_indices(len(records), step, cfg.train.batch_size, cfg.train.seed)[rank::world]
            torch.manual_seed(cfg.train.seed * 1_000_003 + step)  # dropout: a function of (seed, step)
            batch = {k: v.to(acc.device) for k, v in collate([records[i] for i in idx]).items()}
            loss = ddp_model(batch, cfg.stage)
            optimizer.zero_grad()
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            mean_loss = acc.reduce(loss.detach(), "mean").item()  # the whole batch's loss in the log
            f.write(json.dumps({"step": step - 1, "loss": round(mean_loss, 6)}) + "\n")
            f.flush()
            if step % cfg.train.save_every == 0 and step < cfg.train.steps and acc.is_main_process:
                _save_resume(out, model, optimizer, step)
    if acc.is_main_process:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
        shutil.rmtree(out / RESUME_DIR, ignore_errors=True)
    acc.wait_for_everyone()
    return out


class _NoLog:
    """The log of a process other than the main one: nothing is written."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def load_trained(run: str | Path, vocab: Vocab) -> tuple[EhrModel, EhrTrainConfig]:
    """A finished run's model (eval mode) and config."""
    from commons.config import from_dict, load_yaml

    run = Path(run)
    if not (run / "model.safetensors").is_file():
        raise DataFileError(f"{run} holds no model.safetensors (not a finished `medtok-qa ehr` run)")
    cfg = from_dict(EhrTrainConfig, load_yaml(run / "config.yaml"))
    model = build_model(vocab, cfg.model, cfg.train.seed)
    model.load_state_dict(load_file(run / "model.safetensors"))
    return model.eval(), cfg
