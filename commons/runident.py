"""A run's identity: its settings and its inputs' content, not the paths they were read from.

A run folder's saved config (``train_config.yaml``, ``eval_config.yaml``, ...) gets a sidecar
``<stem>.inputs.json`` with the sha256 of every input the config names (an existing file, or a
folder's manifest and file list). A later command compares against both, so:

- a training file rewritten in place (same path, same ids, answers moved) is a change: resume
  refuses it instead of finishing on mixed data;
- the same inputs at another path (a copied data file, a moved run folder) are no change.

The run's own location (``output_dir`` / ``output``) is never part of its identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from commons.config import config_yaml, first_difference, safe_yaml, to_dict, with_defaults
from commons.errors import ConfigError
from commons.io import read_json, sha256_file, write_text

# Where a run is, how to treat its folder, where it reports: none of it is what the run is.
NOT_IDENTITY = ("output_dir", "output", "resume", "force", "report_to", "progress")
_FOLDER_LISTING_DEPTH = 2  # a folder input is known by its manifest and its files' names and sizes


def inputs_path(config_path: str | os.PathLike) -> Path:
    config_path = Path(config_path)
    return config_path.with_name(config_path.name.rsplit(".", 1)[0] + ".inputs.json")


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if len(p.relative_to(folder).parts) <= _FOLDER_LISTING_DEPTH):
        if path.is_file() and not path.name.startswith("."):
            h.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
    manifest = folder / "manifest.json"
    if manifest.is_file():
        h.update(manifest.read_bytes())
    return h.hexdigest()


def _content_digest(value: str) -> str | None:
    path = Path(value)
    try:
        if path.is_file():
            return sha256_file(path)
        if path.is_dir():
            return "folder:" + _folder_digest(path)
    except OSError:
        return None
    return None


def _string_options(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        if prefix == "" and key in NOT_IDENTITY:
            continue
        if isinstance(value, dict):
            out.update(_string_options(value, f"{prefix}{key}."))
        elif isinstance(value, str) and value:
            out[f"{prefix}{key}"] = value
    return out


def input_digests(cfg: Any) -> dict[str, dict[str, str]]:
    """``{"data.train_file": {"path": ..., "sha256": ...}}`` for every option naming an existing path."""
    found = {}
    for name, value in _string_options(to_dict(cfg)).items():
        digest = _content_digest(value)
        if digest is not None:
            found[name] = {"path": value, "sha256": digest}
    return found


def inputs_json(cfg: Any) -> str:
    return json.dumps({"inputs": input_digests(cfg)}, indent=1) + "\n"


def _get(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def run_difference(cfg: Any, saved_config: Path, ignore: tuple[str, ...] = ()) -> str | None:
    """The first way the run ``cfg`` would differ from the one saved at ``saved_config``, or None.

    Settings are compared as saved, except the run's own location; inputs by content where the
    saved run recorded it (runs saved before that are compared by path)."""
    try:
        old = safe_yaml(saved_config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict):
        return f"its {saved_config.name} is unreadable"
    old = with_defaults(type(cfg), old)
    new = to_dict(cfg)
    try:
        recorded = read_json(inputs_path(saved_config)).get("inputs", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}
    for name, was in recorded.items():
        if not isinstance(was, dict):
            continue
        now_path = _get(new, name)
        now = _content_digest(now_path) if isinstance(now_path, str) and now_path else None
        if now is not None and now == was.get("sha256"):
            _set(old, name, now_path)  # the same content, wherever it is now
        elif now is not None and now_path == was.get("path"):
            return (f"{name}: the content of {now_path} changed since that run (sha256 "
                    f"{str(was.get('sha256'))[:12]} -> {now[:12]})")
    return first_difference(old, new, ignore=NOT_IDENTITY + tuple(ignore))


def refuse_other_run(cfg: Any, saved_config: Path, where: str | Path, option: str, force: bool,
                     ignore: tuple[str, ...] = ()) -> bool:
    """For commands that write results without resuming (eval, link, reference): True when
    ``saved_config`` describes another run that ``force`` allows to replace; raises when it is
    another run and ``force`` is off; False when there is none or it is the same run."""
    if not saved_config.is_file():
        return False
    diff = run_difference(cfg, saved_config, ignore)
    if diff is None:
        return False
    if force:
        return True
    raise ConfigError(f"{option} {where} holds a run with other settings ({diff}); use another {option}, or "
                      "--force true to replace it")


def save_run_config(cfg: Any, path: str | Path) -> None:
    """A run's config and, beside it, its inputs' digests (written first: the config describes them)."""
    write_text(inputs_path(path), inputs_json(cfg))
    write_text(path, config_yaml(cfg))


def starts_fresh(cfg: Any, saved: Path, out: Path) -> bool:
    """Whether a run in folder ``out`` must start over; raises if it holds a run with other settings.

    ``saved`` is the config the folder's run saved, ``cfg`` (with ``resume`` and ``force`` fields)
    the one about to run; the run is known by its settings and its inputs' content, not by where its
    folder is. Same run: resume. Another: an error that says how to proceed, unless ``force`` (or
    ``resume: false``) says to start over."""
    if not saved.is_file():
        return not cfg.resume
    diff = run_difference(cfg, saved)
    if diff is None:
        return not cfg.resume
    if cfg.force or not cfg.resume:
        return True
    raise ConfigError(f"output_dir {out} holds a run with other settings ({diff}); use another --output_dir, "
                      "or --force true to discard that run")
