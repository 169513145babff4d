"""``python -m recipes.reference``: train the embeddings-only references (no LLM) the prefix methods are
read against (qa/reference.py), on exactly the fine-tunes' training questions.

    python -m recipes.reference --medtok runs/pipeline/medtok --data.train_file runs/pipeline/linked/linked.jsonl \
        --data.limit_train 32 --data.limit_val 24 --output runs/reference

Writes ``<output>/<reference>-seed<k>/`` per reference and seed (reference.json, weights,
split.json); ``python -m recipes.evaluate --references <folders>`` scores them beside the LLM methods.
The ``data`` options are the fine-tunes' own (qa.training.DataOptions): give the same values
and the split is the same (the pipeline passes its fine-tune settings through).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from commons.config import FieldError, parse_config
from commons.errors import cli_entry
from commons.io import check_writable_dir
from commons.runident import refuse_other_run
from commons.runident import save_run_config as save_config  # the config with its inputs' digests
from commons.runlock import run_lock
from medtok_core.tokenizer import MedTokTokenizer
from qa.prefix import CodeSource
from qa.reference import (
    CodeVectors,
    ReferenceOptions,
    get_reference,
    reference_names,
    save_reference,
    train_reference,
)
from qa.training import DataOptions, load_questions, make_split, split_record


def run_folder(output: str | Path, name: str, seed: int) -> Path:
    """Where reference ``name`` trained with ``seed`` is written (the pipeline reads it there)."""
    return Path(output) / f"{name}-seed{seed}"


@dataclass
class ReferenceConfig:
    """Train the embeddings-only references (no LLM) on the fine-tunes' training split."""

    output: str = "runs/reference"  # folder of one sub-folder per reference and seed
    medtok: str = ""  # MedTok artifact folder (or its training run folder)
    # References to train: ref-medtok (MedTok embeddings), ref-text (text-encoder vectors).
    references: list[str] = field(default_factory=reference_names, metadata={"choices": reference_names})
    seeds: list[int] = field(default_factory=lambda: [0])  # one model per seed, as the fine-tunes
    # The fine-tunes' data options (the same values give the same training questions and held-out slice).
    data: DataOptions = field(default_factory=DataOptions)
    model: ReferenceOptions = field(default_factory=ReferenceOptions)
    force: bool = False  # replace references in --output trained with other settings (otherwise an error)

    def __post_init__(self):
        if not self.medtok:
            raise FieldError("medtok", "is required: the MedTok artifact whose codes the references read")
        for name in self.references:
            get_reference(name)
        if self.references and not self.seeds:
            raise FieldError("seeds", "is empty; give at least one seed")


def train_references(cfg: ReferenceConfig) -> list[Path]:
    """Train every (reference, seed); returns the folders written."""
    train, val = make_split(load_questions(cfg.data), cfg.data)
    m = cfg.model
    codes = CodeSource(MedTokTokenizer.from_pretrained(cfg.medtok), "stem", m.codes_per_mention, m.max_codes,
                       min_confidence=m.min_code_confidence)
    split = split_record(cfg.data, train, val)
    folders = []
    for name in cfg.references:
        vectors = CodeVectors(codes, get_reference(name).features)
        for seed in cfg.seeds:
            t0 = time.perf_counter()
            model, summary = train_reference(name, vectors, train, val, m, seed)
            folder = save_reference(run_folder(cfg.output, name, seed), model, m, seed, summary, split)
            folders.append(folder)
            best = summary["best"] or {}
            acc = "—" if best.get("val_acc") is None else f"{100 * best['val_acc']:.1f}%"
            print(f"{name} seed {seed}: {summary['n_train_covered']}/{summary['n_train']} training questions "
                  f"with a coded option; held-out accuracy {acc} (epoch {best.get('epoch', '—')} of "
                  f"{summary['epochs_run']}), {time.perf_counter() - t0:.1f} s -> {folder}", file=sys.stderr)
    save_config(cfg, Path(cfg.output) / "reference_config.yaml")
    return folders


@cli_entry
def main(argv: list[str] | None = None) -> list[Path]:
    cfg = parse_config(ReferenceConfig, argv, prog="python -m recipes.reference")
    check_writable_dir(cfg.output, "--output")
    with run_lock(cfg.output, "medtok-qa reference"):
        refuse_other_run(cfg, Path(cfg.output) / "reference_config.yaml", cfg.output, "--output", cfg.force)
        return train_references(cfg)


if __name__ == "__main__":
    main()
