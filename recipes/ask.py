"""``medtok-qa ask``: answer multiple-choice questions with a QA checkpoint (see :mod:`qa.ask`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from commons.config import COMMAND_NAME, underscore_flags
from commons.errors import ConfigError, cli_entry
from qa.ask import PROMPT_HELP, Asker, load_linker, read_blocks, run
from qa.ask import __doc__ as ask_doc


def _one_line_error(message: str):
    raise ConfigError(f"{message}; see medtok-qa ask --help")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND_NAME.get() or "medtok-qa ask", description=ask_doc.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="QA checkpoint folder (or a run folder with best/)")
    parser.add_argument("--question", help="question text (stem + 'A: ...' lines) or JSON; else read stdin")
    parser.add_argument("--json", action="store_true", help="one JSON object per question on stdout")
    parser.add_argument("--medtok", help="MedTok artifact folder, if it moved since training")
    parser.add_argument("--no_linker", action="store_true", help="do not link mentions (use codes in the input)")
    parser.add_argument("--data_dir", help="data directory for the linker")
    parser.add_argument("--allow_download", action="store_true",
                        help="fetch the checkpoint's base model from the Hugging Face Hub if it is not cached")
    parser.add_argument("--allow_unverified", action="store_true",
                        help="load a checkpoint written before manifests were required (warns; only if you trust it)")
    parser.error = _one_line_error  # type: ignore[method-assign]
    args = parser.parse_args(underscore_flags(argv))

    from qa.model import load_qa_checkpoint

    model = load_qa_checkpoint(args.checkpoint, medtok=args.medtok, allow_download=args.allow_download,
                               allow_unverified=args.allow_unverified)
    asker = Asker(model, load_linker(not args.no_linker, args.data_dir))
    if args.question is not None:
        texts: Iterator[str] = iter([args.question])
    else:
        interactive = sys.stdin.isatty()
        if interactive:
            print(PROMPT_HELP, file=sys.stderr)
        texts = read_blocks(sys.stdin, interactive)
    counts: dict = {}
    errors = run(asker, texts, args.json, counts=counts)
    # Questions were asked and none could be answered (a bad --question, piped input that is all
    # malformed): a failed command. Some answered: the errors were reported line by line.
    return 2 if errors and not counts["answered"] else 0


if __name__ == "__main__":
    sys.exit(main())
