"""What produced a result: commit (and whether the tree was dirty), machine, seeds, exact command.

Every ``results.json`` carries this block (``provenance``), so a published number can be traced to
the code and the command that made it. ``MEDTOK_COMMAND`` (set by ``recipes.pipeline`` for its
stages) names the command the user typed when a stage runs under the pipeline.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMAND_ENV = "MEDTOK_COMMAND"


def git_state(root: Path = REPO_ROOT) -> dict:
    """{"commit": sha or None, "dirty": bool or None}; None when git or the repository is missing."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip() if commit else None, "dirty": None if status is None else bool(status.strip())}


def this_command() -> str:
    """The command line of this process, as it would be typed (interpreter shown as ``python``)."""
    argv = list(sys.argv)
    if not argv:
        return "python"
    first = Path(argv[0]).resolve()
    if first.suffix == ".py" and REPO_ROOT in first.parents:  # python -m package.module (or a script)
        module = ".".join(first.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__main__")
        return shlex.join(["python", "-m", module, *argv[1:]])
    return shlex.join(["python", *argv])


def provenance(seeds: list[int | None]) -> dict:
    from commons.machine import machine_facts

    return {**git_state(), "machine": machine_facts(), "seeds": sorted({s for s in seeds if s is not None}),
            "command": os.environ.get(COMMAND_ENV) or this_command(), "stage_command": this_command()}
