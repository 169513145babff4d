"""The accelerate ``Accelerator`` of a fine-tune, with DeepSpeed's config filled from the training
config when ``accelerate launch`` runs under DeepSpeed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from commons.errors import ConfigError
from commons.tracking import accelerator_kwargs
from qa.base_model import resolve_dtype

if TYPE_CHECKING:
    from qa.training import TrainConfig

def using_deepspeed() -> bool:
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
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or using_deepspeed()
    if distributed and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo"))  # no NCCL on CPU
    kwargs = {}
    if using_deepspeed():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        ds = filled_deepspeed_config(deepspeed_config_path(cfg), cfg, world)
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
    else:
        kwargs["gradient_accumulation_steps"] = cfg.optim.grad_accum
    return Accelerator(kwargs_handlers=handlers, **kwargs, **accelerator_kwargs(cfg.report_to, cfg.output_dir))
