"""The QA checkpoint folder: the one module that writes, finds and validates it.

    adapter_config.json, adapter_model.safetensors   PEFT LoRA adapter (absent without one)
    projector.safetensors                            the prefix method's module (absent without one)
    qa_config.json                                   format, ModelOptions, MedTok artifact + its token-table sha256
    manifest.json                                    sha256 of the four files above (the ones loading reads)
    train_config.yaml, split.json, metrics.jsonl     copies of the run files (what produced it)
    README.md                                        model card (HF metadata; data, licences, accuracy)

``finetune/train.py`` writes the best epoch's checkpoint to ``<output_dir>/best``; everything that
needs a checkpoint accepts either folder.

Reading one back (:func:`verify_checkpoint`, :func:`load_adapter`, :func:`load_module_state`) checks
the manifest before any file is parsed, every tensor for finiteness, and the adapter against the
checkpoint's own config: a LoRA adapter in safetensors (a pickled ``adapter_model.bin`` is never
loaded), trained on this base model, with exactly the keys and shapes this base model and rank give.
``adapter_config.json`` names the base model as ``qa_config.json`` does (e.g. the alias
``smollm2-135m-instruct``), never a machine's cache path, so a checkpoint can be copied elsewhere.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from commons.errors import UserError
from commons.integrity import check_finite, verify_manifest, write_manifest
from commons.io import atomic_dir, read_format_json, read_json, write_json, write_text
from medtok_core.model_card import CARD
from qa.card import best_validation, qa_card, read_yaml

FORMAT = "medtok-qa-checkpoint"
QA_CONFIG = "qa_config.json"
PROJECTOR = "projector.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_ADAPTER = "adapter_model.bin"
LOADED_FILES = (QA_CONFIG, ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROJECTOR)  # what loading reads (the manifest)
BEST = "best"
_RESTORE = "retrain or restore the checkpoint"


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
            _portable_base_model(tmp / ADAPTER_CONFIG, qa_config["base_model"])
        if module is not None:
            state = {k: v.detach().float().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, str(tmp / PROJECTOR))
        write_json(tmp / QA_CONFIG, {**qa_config, "format": FORMAT})
        write_manifest(tmp, [name for name in LOADED_FILES if (tmp / name).is_file()])
        for name, src in (extra_files or {}).items():
            if Path(src).is_file():
                (tmp / name).write_bytes(Path(src).read_bytes())
        write_model_card(tmp, {**qa_config, "format": FORMAT})  # replaces the card peft wrote
    return path


def write_model_card(folder: Path, qa_config: dict) -> None:
    """README.md: base model, prefix method, data and licences, the best validation accuracy so far."""
    card = qa_card(qa_config, read_yaml(folder / "train_config.yaml"), best_validation(folder / "metrics.jsonl"))
    write_text(folder / CARD, card)


def _portable_base_model(adapter_config: Path, base_model: str) -> None:
    """peft records the base model's local folder (e.g. an absolute cache path); store the reference
    the checkpoint was configured with instead, resolved again on load."""
    cfg = read_json(adapter_config)
    cfg["base_model_name_or_path"] = base_model
    write_json(adapter_config, cfg)


def verify_checkpoint(path: str | Path, allow_unverified: bool = False) -> Path:
    """The checkpoint folder at ``path``, checked against its manifest before any file in it is read.

    ``allow_unverified``: load a (legacy) checkpoint without a manifest, with a warning."""
    folder = find_checkpoint(path)
    if (folder / PICKLED_ADAPTER).exists() and not (folder / ADAPTER_WEIGHTS).exists():
        raise CheckpointError(f"{folder} holds its LoRA adapter as {PICKLED_ADAPTER} (a pickle, which can run code "
                              f"when loaded, so it is never read); convert it to {ADAPTER_WEIGHTS} with peft/"
                              "safetensors from a trusted copy, or retrain")
    verify_manifest(folder, LOADED_FILES, "QA checkpoint", CheckpointError, _RESTORE, allow_unverified)
    return folder


def load_module_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The prefix module's weights, checked to be readable and finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = find_checkpoint(path) / PROJECTOR
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file} is missing or unreadable ({err}); {_RESTORE}") from None
    check_finite(state, file, CheckpointError, "retrain the checkpoint")
    return state


def read_adapter_config(folder: Path, qa_config: dict) -> dict:
    """adapter_config.json, checked to describe a LoRA adapter for this checkpoint's base model and rank."""
    file = folder / ADAPTER_CONFIG
    try:
        cfg = read_json(file)
    except FileNotFoundError:
        raise CheckpointError(f"the LoRA adapter in {folder} is missing ({ADAPTER_CONFIG}); {_RESTORE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({type(err).__name__}); {_RESTORE}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{file} must be a JSON object, got a {type(cfg).__name__}; {_RESTORE}")
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(f"{file}: peft_type is {cfg.get('peft_type')!r}, but a QA checkpoint holds a LoRA "
                              f"adapter (peft_type 'LORA'); {_RESTORE}")
    lora = qa_config.get("lora") if isinstance(qa_config.get("lora"), dict) else {}
    for key, option in (("r", "r"), ("lora_alpha", "alpha")):
        if option in lora and cfg.get(key) != lora[option]:
            raise CheckpointError(f"{file}: {key} is {cfg.get(key)!r} but {QA_CONFIG} says lora.{option} "
                                  f"{lora[option]!r}; the adapter belongs to another run; {_RESTORE}")
    recorded = cfg.get("base_model_name_or_path")
    if recorded is not None and not (isinstance(recorded, str) and _same_base_model(recorded, qa_config["base_model"])):
        raise CheckpointError(f"{file}: the adapter was trained on base model {recorded!r}, this checkpoint's "
                              f"base model is {qa_config['base_model']!r}; {_RESTORE}")
    return cfg


def _same_base_model(recorded: str, configured: str) -> bool:
    """The adapter's base model is the checkpoint's: the same reference, or (checkpoints written before
    references were stored portably) the folder it resolves to."""
    if recorded == configured:
        return True
    from qa.base_model import DEFAULT_BASE_MODEL

    if configured.lower() == DEFAULT_BASE_MODEL:  # legacy: peft stored the provisioned cache folder
        return Path(recorded).name.lower() == "smollm2-135m-instruct"
    try:
        return Path(recorded).expanduser().resolve() == Path(configured).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = folder / ADAPTER_WEIGHTS
    try:
        state = load_file(str(file))
    except FileNotFoundError:
        raise CheckpointError(f"the LoRA adapter in {folder} is missing ({ADAPTER_WEIGHTS}); {_RESTORE}") from None
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"the LoRA adapter in {folder} is missing or damaged ({file.name}: "
                              f"{str(err).splitlines()[0]}); {_RESTORE}") from None
    check_finite(state, file, CheckpointError, _RESTORE)
    return state


def load_adapter(lm, path: str | Path, qa_config: dict | None = None):
    """``lm`` with the checkpoint's LoRA adapter attached (inference only), checked first: LoRA in
    safetensors, finite, for this base model and rank, every key present and none unexpected."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import SafetensorError

    folder = find_checkpoint(path)
    qa_config = qa_config if qa_config is not None else read_checkpoint_config(folder)
    read_adapter_config(folder, qa_config)
    state = _adapter_tensors(folder)
    try:
        with warnings.catch_warnings(record=True) as caught:  # peft only warns about missing keys; we refuse
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(lm, str(folder), is_trainable=False)
    except RuntimeError as err:  # load_state_dict: a tensor of another shape (e.g. another rank)
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                      str(err).splitlines()[0])
        raise CheckpointError(f"the LoRA adapter in {folder} does not fit its config and base model ({detail}); "
                              f"{_RESTORE}") from None
    except (SafetensorError, OSError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"the LoRA adapter in {folder} is missing or damaged "
                              f"({str(err).splitlines()[0]}); {_RESTORE}") from None
    for w in caught:
        if "adapter keys" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        what = f"{len(missing)} missing key(s), e.g. {missing[0]}" if missing else \
            f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}"
        raise CheckpointError(f"the LoRA adapter in {folder} does not match its base model "
                              f"{qa_config['base_model']!r} ({what}); {_RESTORE}")
    return model
