"""``python -m recipes.evaluate``: evaluate QA checkpoints and zero-shot base models by difficulty tier.

    python -m recipes.evaluate --data runs/linked.jsonl --checkpoints runs/qa/none-s0,runs/qa/medtok-s0 \
        --zero_shot default --output runs/eval

Writes results.json, report.md, predictions/<method>.jsonl and PNG plots into --output.
"""

from __future__ import annotations

from commons.config import parse_config
from commons.errors import cli_entry
from commons.io import check_writable_dir
from commons.runlock import run_lock
from eval.evaluate import EvalConfig, evaluate
from eval.report import results_markdown_table


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(EvalConfig, argv, prog="python -m recipes.evaluate")
    check_writable_dir(cfg.output, "--output")
    with run_lock(cfg.output, "medtok-qa eval"):  # one writer; evaluate() refuses another run's folder
        results = evaluate(cfg)  # writes eval_config.yaml beside its results, never before
    print(results_markdown_table(results))
    print(f"report: {results['files']['report']}")
    return results


if __name__ == "__main__":
    main()
