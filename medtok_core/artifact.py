"""The MedTok artifact folder: the one module that writes, finds and validates it.

    config.json               format, model config, codebook regions, top_k, text encoder, ...
    model.safetensors         the trained MedTokModel (only needed to encode new codes)
    vocab.parquet             code_id, system, code, description, parent (code_id = row)
    token_table.safetensors   ids [n, 4, K] int32 (global codebook ids), weights [n, 4, K],
                              embeddings [n, 4*d]
    manifest.json             sha256 of every file above, written at export; required to load (see
                              commons.integrity; ``allow_unverified=True`` loads a legacy folder)
    README.md                 model card (HF metadata; data files and licences, sizes, quality)

Loading needs neither the knowledge graph nor the text encoder. Every check that fails names the
damaged file and says how to fix it, so a corrupted artifact never yields NaN embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from commons.errors import UserError
from commons.integrity import check_finite, write_manifest
from commons.integrity import verify_manifest as _verify_folder
from commons.io import atomic_dir, read_format_json, sha256_file, write_json, write_text
from medtok_core.model_card import CARD, medtok_card

FORMAT = "medtok-artifact"
CONFIG = "config.json"
MODEL = "model.safetensors"
VOCAB = "vocab.parquet"
TABLE = "token_table.safetensors"
MANIFEST = "manifest.json"
FILES = (CONFIG, MODEL, VOCAB, TABLE)
TABLE_KEYS = ("ids", "weights", "embeddings")
VOCAB_COLUMNS = ("code_id", "system", "code", "description", "parent")
_REEXPORT = "re-export it with `medtok-qa train-tokenizer`"


class ArtifactError(UserError):
    """A MedTok artifact folder is missing, incomplete or damaged."""


@dataclass
class Artifact:
    """The parts of an artifact that every user needs (the model weights are loaded on demand)."""

    path: Path | None
    config: dict
    vocab: pd.DataFrame
    table: dict[str, torch.Tensor]


def artifact_dir(run_dir: str | Path) -> Path:
    """Where ``medtok-qa train-tokenizer --output_dir RUN`` puts its artifact."""
    return Path(run_dir) / "artifact"


def find_artifact(path: str | Path) -> Path:
    """The artifact folder at ``path``, or inside a training run folder given instead."""
    path = Path(path)
    for candidate in (path, artifact_dir(path)):
        if (candidate / CONFIG).is_file():
            return candidate
    if not path.exists():
        raise ArtifactError(f"MedTok artifact folder {path} does not exist; train one with "
                            "`medtok-qa train-tokenizer --config configs/medtok_quick.yaml`")
    raise ArtifactError(f"{path} is not a MedTok artifact (no {CONFIG}); pass the folder written by "
                        "medtok_core.train (its output_dir/artifact)")


def table_sha256(path: str | Path) -> str:
    """Identity of an artifact's token table (QA checkpoints record it)."""
    return sha256_file(find_artifact(path) / TABLE)


# ------------------------------------------------------------------------------------------ write
def write_artifact(path: str | Path, config: dict, vocab: pd.DataFrame, table: dict[str, torch.Tensor],
                   model_state: dict[str, torch.Tensor]) -> Path:
    """Write a complete artifact atomically (the folder appears whole or not at all)."""
    from safetensors.torch import save_file

    config = {**config, "format": FORMAT}
    _check_table(table, len(vocab), config, "the token table to export")
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_json(tmp / CONFIG, config)
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(tmp / MODEL))
        vocab.to_parquet(tmp / VOCAB, index=False)
        save_file({k: table[k].detach().contiguous().cpu() for k in TABLE_KEYS}, str(tmp / TABLE))
        write_manifest(tmp, FILES)
        # The model card documents (origin, licences, sizes, quality); it is not part of the manifest.
        write_text(tmp / CARD, medtok_card(config, vocab, table))
    return path


# ------------------------------------------------------------------------------------------- read
def load_artifact(path: str | Path, verify: bool = True, allow_unverified: bool = False) -> Artifact:
    """Config, vocabulary and token table, validated and checked against the manifest first.

    ``allow_unverified``: load a (legacy) artifact that has no manifest, with a warning."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = find_artifact(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ArtifactError(f"MedTok artifact {path} is incomplete: missing {', '.join(missing)}; {_REEXPORT}")
    if verify:
        verify_manifest(path, allow_unverified)
    config = read_config(path)
    try:
        table = load_file(path / TABLE)
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{path / TABLE} is unreadable ({err}); {_REEXPORT}") from None
    try:
        vocab = pd.read_parquet(path / VOCAB)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise ArtifactError(f"{path / VOCAB} is unreadable ({type(err).__name__}); {_REEXPORT}") from None
    cols = [c for c in VOCAB_COLUMNS if c not in vocab.columns]
    if cols:
        raise ArtifactError(f"{path / VOCAB} lacks column(s) {', '.join(cols)}; {_REEXPORT}")
    _check_table(table, len(vocab), config, str(path / TABLE))
    return Artifact(path, config, vocab, table)


def read_config(path: str | Path) -> dict:
    file = Path(path) / CONFIG
    config = read_format_json(file, FORMAT, "MedTok artifact config", ArtifactError, _REEXPORT)
    try:
        int(config["top_k"]), int(config["model"]["dim"]), dict(config["codebook"]["regions"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{file} lacks top_k, model.dim or codebook.regions; {_REEXPORT}") from None
    return config


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The trained model's weights (for encoding codes that are not in the table)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = find_artifact(path) / MODEL
    try:
        state = load_file(file)
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{file} is unreadable ({err}); {_REEXPORT}") from None
    check_finite(state, file, ArtifactError, _REEXPORT)
    return state


def verify_manifest(path: Path, allow_unverified: bool = False) -> None:
    """Every file the loader reads, listed in manifest.json and matching its sha256 (required)."""
    _verify_folder(path, FILES, "MedTok artifact", ArtifactError, _REEXPORT, allow_unverified)


def _check_table(table: dict[str, torch.Tensor], n: int, config: dict, where: str) -> None:
    absent = [k for k in TABLE_KEYS if k not in table]
    if absent:
        raise ArtifactError(f"{where} lacks tensor(s) {', '.join(absent)}; {_REEXPORT}")
    k, d4 = int(config["top_k"]), 4 * int(config["model"]["dim"])
    expect = {"ids": (n, 4, k), "weights": (n, 4, k), "embeddings": (n, d4)}
    for key, shape in expect.items():
        if tuple(table[key].shape) != shape:
            raise ArtifactError(f"{where}: {key} has shape {tuple(table[key].shape)}, expected {shape} "
                                f"for {n} codes; {_REEXPORT}")
    for key in ("weights", "embeddings"):
        bad = ~torch.isfinite(table[key].float())
        if bad.any():
            rows = int(bad.reshape(n, -1).any(dim=1).sum())
            raise ArtifactError(f"{where}: {key} holds NaN or infinite values for {rows} code(s); {_REEXPORT}")
    # Finite but so large that a norm or a dot product overflows (e.g. 1e30): as unusable as NaN.
    norms = torch.linalg.vector_norm(table["embeddings"].float(), dim=1)
    if not torch.isfinite(norms).all():
        rows = int((~torch.isfinite(norms)).sum())
        raise ArtifactError(f"{where}: embeddings of {rows} code(s) are too large (their norm overflows float32); "
                            f"{_REEXPORT}")
    size = int(config["codebook"]["size"]) if "size" in config.get("codebook", {}) else None
    ids = table["ids"]
    if size is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
        raise ArtifactError(f"{where}: token ids outside the codebook [0, {size}); {_REEXPORT}")
