"""``medtok-qa data``: check (or, with ``--download``, fetch) the data files against the manifest."""

from __future__ import annotations

import os
import subprocess
import urllib.error
from pathlib import Path

from commons.config import COMMAND_NAME, underscore_flags
from commons.datadir import ENV_VAR, REPO_ROOT, check_all, download_missing, manifest, resolve_data_dir
from commons.errors import ConfigError, DataFileError, cli_entry


def _one_line_error(message: str):
    raise ConfigError(f"{message}; see python -m recipes.data --help")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog=COMMAND_NAME.get() or "python -m recipes.data",
                                     description="Check (or download) the data files of medtok-qa.")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--download", action="store_true", help="fetch missing files (needs internet)")
    parser.error = _one_line_error  # type: ignore[method-assign]  # argparse's usage+error: one line here
    args = parser.parse_args(underscore_flags(argv))
    if args.download:
        root = Path(args.data_dir or os.environ.get(ENV_VAR) or REPO_ROOT.parent / "shared" / "data")
        if root.exists() and not root.is_dir():
            resolve_data_dir(args.data_dir)  # the one-line error for a file given as the folder
        try:
            fetched = download_missing(root)
        except (urllib.error.URLError, ConnectionError, TimeoutError, subprocess.CalledProcessError) as err:
            reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
            raise DataFileError(f"downloading the missing data files failed ({reason}); check the network "
                                f"connection, or copy the files into {root} by hand") from None
        for rel in fetched:
            print(f"downloaded {rel}")
    resolve_data_dir(args.data_dir)  # a missing or non-folder data dir: one error line, not one per file
    problems = check_all(args.data_dir)
    for p in problems:
        print(p)
    if problems:
        raise SystemExit(1)
    print(f"all {len(manifest())} data files present and verified in {resolve_data_dir(args.data_dir)}")


if __name__ == "__main__":
    main()
