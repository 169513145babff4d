"""``python -m eval.run``: evaluate QA checkpoints and zero-shot base models by difficulty tier.

    python -m eval.run --data runs/linked.jsonl --checkpoints runs/qa/none-s0,runs/qa/medtok-s0 \
        --zero_shot default --output runs/eval

Writes results.json, report.md, predictions/<method>.jsonl and PNG plots into --output.
"""

from __future__ import annotations

from pathlib import Path

from eval.evaluate import EvalConfig, evaluate
from eval.report import results_markdown_table
from medtok_core.config import parse_config, save_config
from medtok_core.errors import cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(EvalConfig, argv, prog="python -m eval.run")
    save_config(cfg, Path(cfg.output) / "eval_config.yaml")
    results = evaluate(cfg)
    print(results_markdown_table(results))
    print(f"report: {results['files']['report']}")
    return results


if __name__ == "__main__":
    main()
