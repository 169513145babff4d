"""Fine-tune a QA model: ``accelerate launch finetune/train.py --config configs/qa_quick.yaml [--key value ...]``.

Shortcuts: ``--prefix_mode X`` = ``--model.prefix_mode X``, ``--medtok P`` = ``--model.medtok P``,
``--base_model M`` = ``--model.base_model M``. See finetune/README.md for every launch command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `accelerate launch finetune/train.py` runs this file as a script: make the checkout importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commons.config import parse_config  # noqa: E402
from commons.errors import cli_entry  # noqa: E402
from recipes.finetune import expand_shortcuts  # noqa: E402


@cli_entry
def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from qa.training import TrainConfig, train

    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(TrainConfig, expand_shortcuts(argv), prog="accelerate launch finetune/train.py")
    best = train(cfg)
    print(f"best QA checkpoint: {best}")


if __name__ == "__main__":
    main()
