"""``medtok-qa build``: build and cache the vocabulary, the knowledge graph and the subgraph index
(see :mod:`medtok_core.build`)."""

from __future__ import annotations

from commons.config import parse_config
from commons.errors import cli_entry
from medtok_core.build import BuildConfig, kg_csv_line, run, summary_text


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BuildConfig, argv, prog="medtok-qa build")
    vocab, kg, index, times, folder = run(cfg)
    print(summary_text(vocab, kg, index, times, folder))
    if (line := kg_csv_line(cfg)) is not None:
        print(line)


if __name__ == "__main__":
    main()
