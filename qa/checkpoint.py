"""The QA checkpoint folder: the one module that writes, finds and validates it.

    adapter_config.json, adapter_model.safetensors   PEFT LoRA adapter (absent without one)
    projector.safetensors                            the prefix method's module (absent without one)
    qa_config.json                                   format, ModelOptions, MedTok artifact + its token-table sha256
    train_config.yaml, split.json, metrics.jsonl     copies of the run files (what produced it)
    README.md                                        model card (HF metadata; data, licences, accuracy)

``finetune/train.py`` writes the best epoch's checkpoint to ``<output_dir>/best``; everything that
needs a checkpoint accepts either folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from commons.errors import UserError
from commons.io import atomic_dir, read_format_json, write_json, write_text
from medtok_core.model_card import CARD
from qa.card import best_validation, qa_card, read_yaml

FORMAT = "medtok-qa-checkpoint"
QA_CONFIG = "qa_config.json"
PROJECTOR = "projector.safetensors"
BEST = "best"


class CheckpointError(UserError):
    """A QA checkpoint folder is missing, incomplete or damaged."""


def best_checkpoint(run_dir: str | Path) -> Path:
    """Where a fine-tuning run (``output_dir``) keeps its best checkpoint."""
    return Path(run_dir) / BEST


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder at ``path`` or its run folder's ``best/``."""
    path = Path(path)
    for candidate in (path, best_checkpoint(path)):
        if (candidate / QA_CONFIG).is_file():
            return candidate
    raise CheckpointError(f"{path} is not a QA checkpoint (no {QA_CONFIG}); pass the folder written by "
                          "finetune/train.py (its output_dir or output_dir/best)")


def read_checkpoint_config(path: str | Path) -> dict:
    """qa_config.json of the checkpoint at ``path``, checked for format and required keys."""
    file = find_checkpoint(path) / QA_CONFIG
    cfg = read_format_json(file, FORMAT, "QA checkpoint config", CheckpointError,
                           "retrain or restore the checkpoint")
    for key in ("prefix_mode", "base_model"):
        if not isinstance(cfg.get(key), str):
            raise CheckpointError(f"{file} lacks {key}; retrain or restore the checkpoint")
    return cfg


def write_checkpoint(path: str | Path, qa_config: dict, lm=None, module: torch.nn.Module | None = None,
                     extra_files: dict[str, Path] | None = None) -> Path:
    """Write the folder atomically: PEFT adapter (if ``lm`` has one), module weights, config, extras."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        if lm is not None and hasattr(lm, "peft_config"):
            lm.save_pretrained(tmp)
        if module is not None:
            state = {k: v.detach().float().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, str(tmp / PROJECTOR))
        write_json(tmp / QA_CONFIG, {**qa_config, "format": FORMAT})
        for name, src in (extra_files or {}).items():
            if Path(src).is_file():
                (tmp / name).write_bytes(Path(src).read_bytes())
        write_model_card(tmp, {**qa_config, "format": FORMAT})  # replaces the card peft wrote
    return path


def write_model_card(folder: Path, qa_config: dict) -> None:
    """README.md: base model, prefix method, data and licences, the best validation accuracy so far."""
    card = qa_card(qa_config, read_yaml(folder / "train_config.yaml"), best_validation(folder / "metrics.jsonl"))
    write_text(folder / CARD, card)


def load_module_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The prefix module's weights, checked to be readable and finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = find_checkpoint(path) / PROJECTOR
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file} is missing or unreadable ({err}); retrain or restore the checkpoint") from None
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{file}: {bad[0]} holds NaN or infinite values; retrain the checkpoint")
    return state


def load_adapter(lm, path: str | Path):
    """``lm`` with the checkpoint's LoRA adapter attached (inference only)."""
    from peft import PeftModel
    from safetensors import SafetensorError

    folder = find_checkpoint(path)
    try:
        return PeftModel.from_pretrained(lm, str(folder), is_trainable=False)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(f"the LoRA adapter in {folder} is missing or damaged "
                              f"({str(err).splitlines()[0]}); retrain or restore the checkpoint") from None
