"""``medtok-qa link``: link the mentions of an MCQ file to medical codes (see :mod:`disease_linking.link`)."""

from __future__ import annotations

from pathlib import Path

from commons.config import parse_config
from commons.errors import cli_entry
from disease_linking.link import LinkCLIConfig, run, summary_path
from disease_linking.summary import format_summary


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(LinkCLIConfig, argv, prog="medtok-qa link")
    summary = run(cfg)
    r = summary["run"]
    print(format_summary(summary))
    print(f"linked {r['questions']} questions ({r['skipped_invalid']} skipped) in {r['link_s']} s "
          f"(+{r['load_s']} s loading) -> {cfg.output}; summary: {summary_path(Path(cfg.output))}")


if __name__ == "__main__":
    main()
