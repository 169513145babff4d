"""Link the mentions of an MCQ file to medical codes.

    medtok-qa link --input MedDDx.json --output linked.jsonl [--authors_output qa.json]
    medtok-qa link --layout medmcqa --allow_network true --output medmcqa_linked.jsonl

Writes the linked JSONL, optionally the authors' QA layout, and ``<output>.summary.json`` (coverage
per tier, mentions per question, codes per system, disease/drug/phenotype split, timings).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from commons.config import config_yaml, require_choice, to_dict
from commons.errors import ConfigError
from commons.fileset import recover, replace_together
from commons.io import check_writable
from commons.runident import inputs_json, inputs_path, refuse_other_run
from commons.runlock import run_lock
from disease_linking.layouts import AUTO, layout_names, load_question_items, question_file
from disease_linking.linker import LinkConfig, Linker
from disease_linking.questions import to_authors_layout, write_jsonl
from disease_linking.summary import summarize


@dataclass
class LinkCLIConfig:
    """Link disease, drug and phenotype mentions of multiple-choice questions to medical codes."""

    # Question file (MedDDx layout, the authors' QA layout, or linked JSONL); default: MedDDx.json of the data dir.
    input: str | None = None
    # How input is read: auto (each question recognised by its keys) or a registered layout; a hub
    # layout (medmcqa) without input downloads its hub dataset, only with allow_network.
    layout: str = field(default=AUTO, metadata={"choices": layout_names})
    allow_network: bool = False  # let a hub layout download its dataset from the Hugging Face hub
    hub_split: str = "validation"  # the split a hub layout reads (MedMCQA's test split hides its answers)
    # Linked JSONL to write.
    output: str = "runs/link/linked.jsonl"  # under runs/, never a stray file in the current directory
    # Also write the questions in the authors' QA layout ({"input": [...], "medical_codes": [...]}) here.
    authors_output: str | None = None
    # Data directory (default: $MEDTOK_DATA_DIR or ../shared/data).
    data_dir: str | None = None
    # Skip (and count) malformed questions instead of stopping at the first one.
    skip_invalid: bool = False
    # Show progress bars.
    progress: bool = True
    # Replace a linked output written with other settings (otherwise that is an error).
    force: bool = False
    linking: LinkConfig = field(default_factory=LinkConfig)

    def __post_init__(self):
        require_choice(self, "layout", layout_names())


def journal_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.txn.json")


def summary_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".summary.json")


def config_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".config.yaml")


def output_files(cfg: LinkCLIConfig) -> list[Path]:
    """Every file one run writes, data first (the order they are committed in); they must differ."""
    output = Path(cfg.output)
    files = [output] + ([Path(cfg.authors_output)] if cfg.authors_output else [])
    files += [summary_path(output), inputs_path(config_path(output)), config_path(output)]
    seen: dict[Path, Path] = {}
    for f in files:
        key = f.absolute().resolve()
        if key in seen:
            raise ConfigError(f"--output {output} and --authors_output {cfg.authors_output} would write the same file "
                              f"{f} twice; give --authors_output its own path")
        seen[key] = f
    return files


def run(cfg: LinkCLIConfig) -> dict:
    if not cfg.output:
        raise ConfigError("--output is required (path of the linked JSONL to write)")
    input_path = question_file(cfg.input, cfg.layout, cfg.data_dir)
    output = Path(cfg.output)
    check_writable(output, "--output")  # before the linker loads for seconds
    if cfg.authors_output:
        check_writable(cfg.authors_output, "--authors_output")
    files = output_files(cfg)
    with run_lock(output, "medtok-qa link", is_file=True):
        return _link_and_write(cfg, input_path, output, files)


def _link_and_write(cfg: LinkCLIConfig, input_path, output: Path, files: list[Path]) -> dict:
    recover(journal_path(output))  # a killed write of the outputs: the previous set back first
    refuse_other_run(cfg, config_path(output), output, "--output", cfg.force)
    items, skipped = load_question_items(input_path, cfg.layout, cfg.skip_invalid, cfg.allow_network, cfg.hub_split)
    t0 = time.perf_counter()
    linker = Linker.from_cache(cfg.linking, cfg.data_dir, progress=cfg.progress)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    linked = linker.link_items(items, progress=cfg.progress)
    t_link = time.perf_counter() - t0
    summary = summarize(linked)
    summary["run"] = {"input": str(input_path or cfg.layout), "questions": len(items), "skipped_invalid": len(skipped),
                      "skipped_reasons": skipped,
                      "load_s": round(t_load, 2), "link_s": round(t_link, 2),
                      "questions_per_s": round(len(items) / max(t_link, 1e-9), 1),
                      "lexicon_terms": len(linker.lexicon), "config": to_dict(cfg)}
    # The outputs form a set, replaced as one (old set or new set, never a mix), data first.
    texts = {summary_path(output): json.dumps(summary, indent=2, default=str) + "\n",
             inputs_path(config_path(output)): inputs_json(cfg), config_path(output): config_yaml(cfg)}
    if cfg.authors_output:
        texts[Path(cfg.authors_output)] = json.dumps([to_authors_layout(it) for it in linked], ensure_ascii=False,
                                                     indent=1)
    with replace_together(files, journal_path(output)) as tmp:
        write_jsonl(tmp[output], linked)
        for path, text in texts.items():
            tmp[path].write_text(text, encoding="utf-8")
    return summary
