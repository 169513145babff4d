"""Read-back integrity shared by every folder the project writes and later loads.

Each folder format (MedTok artifact, QA checkpoint, reference) has one owner module; the owner
calls these helpers so every format is checked the same way:

* :func:`write_manifest` records the sha256 of the files its loader reads, under names relative
  to the folder.
* :func:`verify_manifest` is called before any of those files is opened: the manifest must exist
  (a legacy folder without one loads only with ``allow_unverified`` and a warning), be a JSON
  object ``{"sha256": {name: digest}}``, list every file the loader reads, and name only plain
  files inside the folder (no absolute path, no ``..``, no symlink leading out). Names are checked
  before anything is hashed, so a manifest cannot make the loader read a file outside its folder.
* :func:`check_finite` rejects NaN/inf tensors, naming the file and the tensor.
* :func:`refuse_remote_code` refuses a model folder whose configs map classes to its own Python
  files (``auto_map``): loading it could only work by running that code.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import torch

from commons.errors import UserError
from commons.io import read_json, sha256_file, write_json

MANIFEST = "manifest.json"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class UnverifiedFolderWarning(UserWarning):
    """A folder without a manifest was loaded because the caller allowed it explicitly."""


def member(folder: Path, name: object, where: str, error: type[UserError]) -> Path:
    """``folder / name`` where ``name`` is a plain relative file name that stays inside ``folder``.

    Checked on the name first (no file system access), then on the resolved path, so a symlink
    inside the folder that points outside is refused as well.
    """
    bad = None
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        bad = "is not a plain file name"
    else:
        parts = PurePosixPath(name).parts
        if PurePosixPath(name).is_absolute() or re.match(r"^[A-Za-z]:", name):
            bad = "is an absolute path"
        elif any(p in ("..", ".") for p in parts) or name.endswith("/"):
            bad = "leaves the folder ('..' or '.')"
    if bad is None:
        path = folder / name
        root = folder.resolve()
        target = path.resolve()
        if target != root and root not in target.parents:
            bad = "points outside the folder (symlink)"
        else:
            return path
    raise error(f"{where}: entry {name!r} {bad}; entries must name files inside {folder}")


def write_manifest(folder: Path, names: Iterable[str]) -> None:
    """``manifest.json`` with the sha256 of each of ``names`` (relative to ``folder``)."""
    write_json(folder / MANIFEST, {"sha256": {name: sha256_file(folder / name) for name in sorted(names)}})


def read_manifest(folder: Path, error: type[UserError], advice: str) -> dict[str, str] | None:
    """The name -> sha256 map of ``folder``'s manifest (None when there is none), shape-checked."""
    file = folder / MANIFEST
    if not file.exists():
        return None
    if file.is_symlink() or not file.is_file():
        raise error(f"{file} is not a regular file; {advice}")
    try:
        data = read_json(file)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise error(f"{file} is not valid JSON ({type(err).__name__}); {advice}") from None
    if not isinstance(data, dict):
        raise error(f"{file} must be a JSON object {{\"sha256\": {{file: digest}}}}, got a "
                    f"{type(data).__name__}; {advice}")
    digests = data.get("sha256")
    if not isinstance(digests, dict):
        raise error(f"{file} lacks its \"sha256\" object (file name -> digest); {advice}")
    for name, digest in digests.items():
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise error(f"{file}: the digest of {name!r} is not a sha256 hex string; {advice}")
    return digests


def verify_manifest(folder: str | os.PathLike, required: Iterable[str], what: str, error: type[UserError],
                    advice: str, allow_unverified: bool = False) -> None:
    """Check ``folder`` against its manifest before any file in it is read.

    ``required``: the files the loader is about to read (those present must be listed).
    """
    folder = Path(folder)
    file = folder / MANIFEST
    digests = read_manifest(folder, error, advice)
    if digests is None:
        if not allow_unverified:
            raise error(f"{what} {folder} has no {MANIFEST}, so its files cannot be verified (written by an "
                        f"older version, or damaged); {advice}, or, if you trust it, load it unverified "
                        "(allow_unverified=True; eval: --allow_unverified true; ask: --allow_unverified)")
        warnings.warn(f"{what} {folder} has no {MANIFEST}; loading it unverified as asked", UnverifiedFolderWarning,
                      stacklevel=3)
        return
    paths = {name: member(folder, name, str(file), error) for name in digests}  # every name first, nothing opened
    unlisted = [name for name in required if name not in digests and (folder / name).exists()]
    if unlisted:
        raise error(f"{file} does not list {', '.join(unlisted)} (every file the loader reads must be); {advice}")
    for path in paths.values():
        if not path.is_file():
            raise error(f"{path} is listed in {file} but missing; {advice}")
    for name, path in paths.items():
        if sha256_file(path) != digests[name]:
            raise error(f"{path} differs from the sha256 recorded in {file} (damaged or edited); {advice}")


def check_finite(tensors: Mapping[str, torch.Tensor], file: str | os.PathLike, error: type[UserError],
                 advice: str) -> None:
    """Every floating-point tensor finite, or one error naming the file and the first bad tensor."""
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise error(f"{file}: tensor {name} holds NaN or infinite values; {advice}")


def refuse_remote_code(folder: str | os.PathLike, what: str = "model folder") -> None:
    """Refuse a model folder whose config.json or tokenizer_config.json carries an ``auto_map``.

    transformers is always called with ``trust_remote_code=False``; refusing such a folder first
    gives one clear line instead of a prompt on a terminal or a traceback without one.
    """
    folder = Path(folder)
    for name in ("config.json", "tokenizer_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            data = read_json(file)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise UserError(f"{file} is not valid JSON; pass an intact {what}") from None
        if isinstance(data, dict) and data.get("auto_map"):
            raise UserError(f"{what} {folder} needs its own Python code ({name} has an auto_map), and this "
                              "project never runs code shipped with a model (trust_remote_code=False); use a "
                              "model whose architecture transformers implements")
