"""``medtok-qa data``: check (or, with ``--download``, fetch) the data files against the manifest."""

from __future__ import annotations

import os
from pathlib import Path

from commons.config import COMMAND_NAME, underscore_flags
from commons.datadir import ENV_VAR, REPO_ROOT, check_all, download_missing, manifest, resolve_data_dir
from commons.errors import ConfigError, cli_entry


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
        for rel in download_missing(root):
            print(f"downloaded {rel}")
    problems = check_all(args.data_dir)
    for p in problems:
        print(p)
    if problems:
        raise SystemExit(1)
    print(f"all {len(manifest())} data files present and verified in {resolve_data_dir(args.data_dir)}")


if __name__ == "__main__":
    main()
