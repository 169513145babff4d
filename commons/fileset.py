"""Replace a set of files together: a kill, a full disk or a crash leaves the old set whole or the
new set whole, never a mix (the linked JSONL with its summary and config; an evaluation's
predictions, plots, report, config and results).

    with replace_together([data, summary, config], journal) as tmp:
        write(tmp[data]); write(tmp[summary]); write(tmp[config])   # temporaries beside the targets

Each file is first written whole to a temporary beside its target (a full disk fails here, with the
old set untouched). Then a journal naming the targets is written, each old file is moved aside,
the new ones are renamed in, in the order given (data first, the files describing it last), and
the journal is removed: that removal is the commit. A kill before it is rolled back by
:func:`recover` (which every writer calls under its lock before writing): the old files come
back and files the old set did not have are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from commons.io import write_text


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.txn.tmp")


def _backup(path: Path) -> Path:
    return path.with_name(f".{path.name}.txn.old")


def recover(journal: str | os.PathLike) -> bool:
    """Undo an interrupted :func:`replace_together` whose journal is ``journal``; True if it did."""
    journal = Path(journal)
    if not journal.is_file():
        return False
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        entries = [(Path(t), bool(had)) for t, had in record["targets"]]
    except (OSError, ValueError, KeyError, TypeError):
        # The journal itself was being written: nothing was moved yet (it is written before any rename).
        journal.unlink(missing_ok=True)
        return False
    for target, had_old in entries:
        backup = _backup(target)
        if backup.exists():
            os.replace(backup, target)
        elif not had_old:
            target.unlink(missing_ok=True)
        _tmp(target).unlink(missing_ok=True)
    journal.unlink(missing_ok=True)
    print(f"note: a write into {journal.parent} was interrupted; its previous files were restored", file=sys.stderr)
    return True


def _clean_leftovers(targets: Sequence[Path]) -> None:
    """Backups of a committed set (killed while deleting them) and temporaries of a failed one."""
    for target in targets:
        _backup(target).unlink(missing_ok=True)
        _tmp(target).unlink(missing_ok=True)


@contextlib.contextmanager
def replace_together(targets: Sequence[str | os.PathLike], journal: str | os.PathLike) -> Iterator[dict[Path, Path]]:
    """Yield ``{target: temporary}``; when the block succeeds, every target is replaced by its
    temporary as one step (see the module docstring). Targets whose temporary the block did not
    create are left as they are."""
    targets = [Path(t) for t in targets]
    if len(set(targets)) != len(targets):
        raise ValueError(f"a file set names one file twice: {[str(t) for t in targets]}")
    journal = Path(journal)
    recover(journal)
    _clean_leftovers(targets)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    temps = {t: _tmp(t) for t in targets}
    try:
        yield temps
        written = [t for t in targets if temps[t].exists()]
        write_text(journal, json.dumps({"targets": [[str(t), t.exists()] for t in written]}) + "\n")
        try:
            for target in written:
                if target.exists():
                    os.replace(target, _backup(target))
                os.replace(temps[target], target)
        except Exception:
            recover(journal)  # a rename failed (not a kill): put the old set back now
            raise
        journal.unlink()  # the commit
        _clean_leftovers(targets)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
