"""One writer per output folder: a lock file naming its owner (pid, host, command).

    with run_lock(out_dir, "finetune"):
        ...  # write the run

Every command that writes a run folder takes the folder's lock first. A second writer gets one
``error:`` line naming the owner; a lock left by a process that no longer runs (same host, pid
gone) is taken over with a one-line note. The lock goes with the block, with ``SystemExit``
(SIGTERM is turned into one while a lock is held) and, as a last resort, at interpreter exit.

Child processes of the holder (an ``accelerate launch`` of the fine-tune, the pipeline's stages)
inherit ``MEDTOK_RUNLOCK_PIDS``: a lock held by one of their ancestors is theirs to write under.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from commons.errors import ConfigError

LOCK_NAME = ".medtok.lock"
HOLDERS_ENV = "MEDTOK_RUNLOCK_PIDS"  # pids (ours and our ancestors') whose locks we may write under

_held: dict[Path, int] = {}  # lock file -> depth of re-entry in this process


def lock_file_for(target: str | os.PathLike, is_file: bool = False) -> Path:
    """The lock of a run folder (``<folder>/.medtok.lock``) or of an output file's set
    (``<parent>/.<name>.lock``, e.g. a linked JSONL with its summary and config)."""
    target = Path(target).absolute()
    return target.with_name(f".{target.name}.lock") if is_file else target / LOCK_NAME


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_owner(lock: Path) -> dict | None:
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _holder_pids() -> set[int]:
    return {int(p) for p in os.environ.get(HOLDERS_ENV, "").split(",") if p.isdigit()}


def _write_owner(lock: Path, command: str, exclusive: bool) -> bool:
    """Create the lock (``exclusive``: only if absent) holding our pid; False when another has it."""
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
    if exclusive:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        return True
    # Taking over a stale lock: replace it whole, then check that no one else replaced it after us.
    fd, tmp = tempfile.mkstemp(prefix=f"{lock.name}.", suffix=".tmp", dir=lock.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body)
    os.replace(tmp, lock)
    time.sleep(0.05)
    return (_read_owner(lock) or {}).get("pid") == os.getpid()


def _describe(owner: dict) -> str:
    return (f"pid {owner.get('pid')} on {owner.get('host')} ({owner.get('command') or 'a medtok-qa command'}, "
            f"since {owner.get('started', '?')})")


def acquire(lock: Path, command: str) -> None:
    """Take ``lock`` or raise :class:`ConfigError` naming who holds it."""
    if lock in _held:
        _held[lock] += 1
        return
    _make_folder(lock.parent)
    host = socket.gethostname()
    for _ in range(3):  # a lock released or taken over between our looks: look again
        if _write_owner(lock, command, exclusive=True):
            break
        owner = _read_owner(lock)
        if owner is None:  # being written this instant, or damaged: give its writer a moment
            time.sleep(0.1)
            owner = _read_owner(lock) or {}
        pid = owner.get("pid")
        if isinstance(pid, int) and pid in _holder_pids() | {os.getpid()}:
            _held[lock] = 1  # an ancestor (launcher, pipeline) holds it for us: write under it
            _inherited.add(lock)
            return
        if owner.get("host") == host and isinstance(pid, int) and not _pid_alive(pid):
            print(f"note: taking over the lock {lock} of {_describe(owner)}, which no longer runs", file=sys.stderr)
            if _write_owner(lock, command, exclusive=False):
                break
            continue
        _remove_empty_folders(lock)
        if not owner:
            raise ConfigError(f"{lock.parent} is locked by an unreadable lock file {lock}; if no medtok-qa "
                              "command writes there, delete that file")
        raise ConfigError(f"{lock.parent} is being written by {_describe(owner)}; wait for it to finish or use "
                          f"another output folder (if that process is gone, delete {lock})")
    else:
        raise ConfigError(f"could not take the lock {lock} (other writers keep taking it); try again")
    _held[lock] = 1
    pids = _holder_pids() | {os.getpid()}
    os.environ[HOLDERS_ENV] = ",".join(map(str, sorted(pids)))
    _install_sigterm()


_inherited: set[Path] = set()
_created: dict[Path, list[Path]] = {}  # lock -> folders made for it (removed again if left empty)


def _make_folder(folder: Path) -> None:
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    _created[folder / LOCK_NAME] = missing  # keyed loosely: looked up by the lock's parent below


def _remove_empty_folders(lock: Path) -> None:
    """A refused or failed run leaves no empty folder behind that it made only for its lock."""
    for folder in _created.pop(lock.parent / LOCK_NAME, []):
        try:
            folder.rmdir()
        except OSError:
            break


def release(lock: Path) -> None:
    if lock not in _held:
        return
    _held[lock] -= 1
    if _held[lock] > 0:
        return
    del _held[lock]
    if lock in _inherited:
        _inherited.discard(lock)
        return
    if (_read_owner(lock) or {}).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)
    _remove_empty_folders(lock)
    if not _held:  # no lock of ours left for later child processes to write under
        pids = _holder_pids() - {os.getpid()}
        os.environ[HOLDERS_ENV] = ",".join(map(str, sorted(pids)))


def _release_all() -> None:
    for lock in list(_held):
        _held[lock] = 1
        release(lock)


atexit.register(_release_all)
_sigterm_installed = False


def _install_sigterm() -> None:
    """SIGTERM while a lock is held: exit through ``SystemExit`` so ``finally`` blocks release it
    (only where nobody else set a handler: the pipeline's own SIGTERM handling stays in charge)."""
    global _sigterm_installed
    if _sigterm_installed:
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True
    except ValueError:  # not the main thread: the default action stays (atexit does not run then)
        pass


def _on_sigterm(signum, frame):
    _release_all()
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def run_lock(target: str | os.PathLike, command: str, is_file: bool = False) -> Iterator[Path]:
    """Hold the writer's lock of run folder ``target`` (or of output file ``target``) for the block."""
    lock = lock_file_for(target, is_file)
    acquire(lock, command)
    try:
        yield lock
    finally:
        release(lock)
