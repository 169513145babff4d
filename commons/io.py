"""Atomic writes: an artifact is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _remove_stale_temps(path: Path) -> None:
    """Temporaries a killed writer of ``path`` left behind (they never replaced anything)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _can_create_in(folder: Path) -> bool:
    """Really try (os.access says yes to root even on a chmod 555 folder mounted read-only)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Fail early, naming the option, when ``path`` cannot be written as a file."""
    from commons.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file path")
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is None or not existing.is_dir() or not _can_create_in(existing):
        raise ConfigError(f"{option} {path}: cannot write into {existing or path.parent} (read-only or not a "
                          "folder); choose another location")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path} is read-only; choose another path or make it writable")


def check_writable_dir(path: str | os.PathLike, option: str) -> None:
    """Fail early, naming the option, when folder ``path`` cannot be created or written."""
    from commons.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder path")
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not _can_create_in(existing):
        raise ConfigError(f"{option} {path}: {existing or path} is not a writable folder; choose another folder")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def replace_marked_block(path: str | os.PathLike, name: str, body: str) -> None:
    """Put ``body`` between ``<!-- name -->`` and ``<!-- /name -->`` in a Markdown file (appended
    when the markers are absent): generated results land in a page without retyping."""
    path = Path(path)
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_text(path, text)


def docs_root(page: str | os.PathLike) -> Path:
    """The folder holding the ``docs/`` tree a Markdown page belongs to (the page's own folder when it
    lies in no ``docs/``): published result folders (``docs/results/<name>/``) go under it."""
    page = Path(page).resolve()
    for folder in page.parents:
        if folder.name == "docs":
            return folder.parent
    return page.parent


def page_link(page: str | os.PathLike, target: str | os.PathLike) -> str:
    """``target`` as a link that works from ``page``'s folder."""
    return Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix()


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_format_json(file: str | os.PathLike, fmt: str, what: str, error: type[Exception], advice: str) -> dict:
    """A JSON object tagged ``"format": fmt`` (the artifacts' own configs), or ``error`` in one line."""
    try:
        data = read_json(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{file} is not valid JSON ({err}); {advice}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{file} is not a {what} (format != {fmt!r})")
    return data


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where built artifacts are cached: ``$MEDTOK_CACHE_DIR`` or ``~/.cache/medtok-qa``."""
    root = os.environ.get("MEDTOK_CACHE_DIR") or Path.home() / ".cache" / "medtok-qa"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
