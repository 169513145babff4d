"""``medtok-qa train-tokenizer``: train MedTok and export its artifact (see :mod:`medtok_core.train`)."""

from __future__ import annotations

from commons.config import parse_config
from commons.errors import cli_entry
from medtok_core.train import TrainConfig, run


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(TrainConfig, argv, prog="medtok-qa train-tokenizer")
    run(cfg)


if __name__ == "__main__":
    main()
