"""User-facing errors and the CLI wrapper that turns them into one clear line.

Library code raises :class:`UserError` (or a subclass) for anything the *user* can fix:
a missing file, a malformed input, a bad option. Entry points wrap ``main`` with
:func:`cli_entry`, so users see ``error: <what is wrong and how to fix it>`` and exit code 2
instead of a traceback. Genuine bugs still raise normally and show a traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class UserError(Exception):
    """An error caused by user input or environment, with a message that says how to fix it."""


class DataFileError(UserError):
    """A required data file is missing or corrupted."""


class ConfigError(UserError):
    """A configuration value or command-line option is invalid."""


def cli_entry(main: F) -> F:
    """Decorate a ``main()``: user errors print one line and exit 2; Ctrl-C exits 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            if os.environ.get("RANK", "0") == "0":  # every process of a launch fails alike: say it once
                print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as err:
            # Where a path the user chose cannot be written: the environment, not a bug.
            where = f" {err.filename}" if err.filename else ""
            print(f"error: cannot write or read{where}: {err.strerror or err}; check the path and its "
                  "permissions", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as err:
            if err.errno not in _DISK_FULL:
                raise
            # A full disk or quota is the environment: the writers leave the previous files whole.
            where = f" {err.filename}" if err.filename else ""
            print(f"error: cannot write{where}: {err.strerror or err}; free some space or write elsewhere",
                  file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
