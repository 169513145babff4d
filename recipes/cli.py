"""``medtok-qa``: one front door to every stage (``medtok-qa <command> --help`` for its options).

    medtok-qa build                                       # vocabulary + knowledge graph (cached)
    medtok-qa train-tokenizer --config configs/medtok_quick.yaml
    medtok-qa link --input MedDDx.json --output linked.jsonl
    medtok-qa finetune --config configs/qa_quick.yaml --prefix_mode medtok   # accelerate options work too
    medtok-qa reference --medtok runs/medtok_quick --data.train_file linked.jsonl   # no-LLM references
    medtok-qa eval --data linked.jsonl --checkpoints runs/qa_a runs/qa_b --zero_shot default
    medtok-qa ask --checkpoint runs/qa_quick
    medtok-qa pipeline                                    # everything, reusing what is built

Each command is the same ``main(argv)`` as its ``python -m`` module, so options, config files,
``--print_config`` and the one-line ``error:`` contract are the same either way.

Each command's target is a ``"module:function"`` string resolved only when that command runs, exactly
as a ``[project.scripts]`` entry point is, so ``medtok-qa --help`` loads none of the heavy libraries.
"""

from __future__ import annotations

import importlib
import sys

from commons.config import COMMAND_NAME
from commons.errors import ConfigError, cli_entry

# command -> (target "module:function", one-line summary); the order is the order of the stages.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("recipes.data:main", "check (or --download) the data files against the manifest"),
    "build": ("recipes.build:main", "build and cache the code vocabulary, knowledge graph and subgraphs"),
    "train-tokenizer": ("recipes.train_tokenizer:main", "train MedTok and export its artifact (token table)"),
    "kgqa": ("recipes.kgqa:main", "generate knowledge-grounded QA (linked JSONL) and its held-out KG edges from the graph"),
    "link": ("recipes.link:main", "link the diseases/drugs of a question file to codes (linked JSONL)"),
    "finetune": ("recipes.finetune:main", "fine-tune a QA model (accelerate launch options accepted)"),
    "reference": ("recipes.reference:main", "train the embeddings-only references (no LLM) on the fine-tunes' split"),
    "eval": ("recipes.evaluate:main", "evaluate QA checkpoints and zero-shot baselines by difficulty tier"),
    "ask": ("recipes.ask:main", "answer questions interactively with a QA checkpoint"),
    "pipeline": ("recipes.pipeline:main", "run every stage end to end, skipping what is up to date"),
    "quality": ("recipes.linking_quality:main", "linking precision/recall on the hand-annotated gold sample"),
    "recipe": ("recipes.recipe:main", "sweep LoRA-only fine-tune recipes, judged on the held-out slice only"),
    "medtok-quality": ("recipes.medtok_quality:main", "MedTok token quality (hierarchy, cross-system mapping)"),
    "ehr": ("recipes.ehr:main", "EHR models on MEDS patient timelines: ehr convert|data|pretrain|finetune|eval"),
    "publish": ("recipes.publish:main", "copy an evaluation into docs/results/<name>/ and its table into the README"),
}


def commands() -> dict[str, tuple[str, str]]:
    """The commands, in the order of the stages."""
    return COMMANDS


def usage() -> str:
    table = commands()
    width = max(map(len, table))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in table.items()]
    return ("usage: medtok-qa <command> [--config FILE.yaml] [--option value ...]\n\n"
            "MedTok medical-code tokenizer and prefix-tuned medical QA.\n\ncommands:\n" + "\n".join(lines)
            + "\n\n`medtok-qa <command> --help` lists a command's options; `--print_config` prints the "
              "resolved config without running.")


def resolve(name: str):
    """The ``main`` function of command ``name`` (imported now, not before)."""
    table = commands()
    if name not in table:
        raise ConfigError(f"unknown command {name!r}; commands: {', '.join(table)}")
    module, func = table[name][0].split(":")
    return getattr(importlib.import_module(module), func)


def run(argv: list[str]) -> int:
    """Dispatch ``argv`` (``<command> [options]``); returns the exit code."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name.startswith("-"):
        raise ConfigError(f"the command comes first: medtok-qa <command> {name} ...; commands: "
                          f"{', '.join(commands())}")
    main = resolve(name)
    # Its main(argv) wears its own cli_entry: its user errors become one line + exit 2 there.
    token = COMMAND_NAME.set(f"medtok-qa {name}")  # what its --help calls it
    try:
        result = main(rest)
    finally:
        COMMAND_NAME.reset(token)
    # qa.ask returns its exit code; the others return results (dicts) or None.
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


@cli_entry
def main(argv: list[str] | None = None) -> None:
    code = run(list(sys.argv[1:] if argv is None else argv))
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
