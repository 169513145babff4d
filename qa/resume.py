"""The resumable state of a fine-tune (``output_dir/_resume``): trainer counters, trainable weights,
optimizer, scheduler and RNG streams, saved atomically with a sha256 manifest checked before any of
it is loaded."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from commons.errors import UserError
from commons.io import read_json, sha256_file, write_json
from qa.accelerate_setup import using_deepspeed

RESUME_DIR = "_resume"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"


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


def save_resume(accelerator, out: Path, state: TrainerState) -> None:
    """Resumable state (trainable weights, optimizer, scheduler, RNG), swapped in atomically."""
    final = out / RESUME_DIR
    tmp = out / f".{RESUME_DIR}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    kwargs = {"exclude_frozen_parameters": True} if using_deepspeed() else {}
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


def load_resume(accelerator, out: Path) -> TrainerState | None:
    path = out / RESUME_DIR
    if not (path / STATE_FILE).is_file():
        return None
    _verify_resume_state(path)
    kwargs = {"load_module_strict": False} if using_deepspeed() else {"strict": False}
    accelerator.load_state(str(path), **kwargs)
    rng = path / f"rng_{accelerator.process_index}.json"
    if rng.is_file():
        _set_rng_state(read_json(rng))
    return TrainerState(**read_json(path / STATE_FILE))


def register_trainable_only_saving(accelerator, trainable: set[str]) -> None:
    """Resume states hold only trainable weights: the frozen base (GBs for 8B) is reloaded anyway."""

    def save_hook(models, weights, output_dir):
        for i, w in enumerate(weights):
            weights[i] = {k: v for k, v in w.items() if k in trainable}

    accelerator.register_save_state_pre_hook(save_hook)
