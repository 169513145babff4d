"""The model card (README.md) of a QA checkpoint: base model, prefix method, training data with their
licences, validation accuracy. The card's shared pieces (licence rows, rendering) are MedTok's."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from medtok_core.model_card import (
    MEDDDX,
    MEDTOK_PAPER,
    _licence_section,
    _metadata_licence,
    _yaml_block,
    data_rows,
    non_commercial,
    render,
    trained_rows,
)

HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # the offline default's origin


def _hub_id(base_model: str) -> str | None:
    """``base_model`` metadata wants a hub id: a known alias's origin, or an ``org/name`` that is no folder."""
    if base_model in HUB_IDS:
        return HUB_IDS[base_model]
    if base_model.count("/") == 1 and not Path(base_model).exists():
        return base_model
    return None


def best_validation(metrics_file: Path) -> dict | None:
    """The best epoch's eval record in a metrics.jsonl (the one the checkpoint holds)."""
    if not metrics_file.is_file():
        return None
    best = None
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "eval" and rec.get("best"):
            best = rec
    return best


def qa_card(qa_config: dict, train_config: dict | None, best: dict | None) -> str:
    """The card of a QA checkpoint: base model, prefix method, data with licences, validation accuracy."""
    train_config = train_config or {}
    data = train_config.get("data", {})
    train_file = data.get("train_file")
    artifact_cfg = _read_artifact_config(qa_config.get("medtok"))
    kg_rows = trained_rows(artifact_cfg)
    if train_file:  # a file of the user's: its licence is that of the questions it holds
        rows = [{"file": str(train_file), "license": "that of its questions (MedDDx: none stated)",
                 "upstream": "local file"}] + kg_rows
    else:
        rows = data_rows([MEDDDX]) + kg_rows
    notes = [f"Trained on tier {data.get('tier') or 'all'} minus a held-out {data.get('val_fraction')} "
             "(the validation questions)."] if data else []
    if kg_rows:
        notes.append(f"The knowledge-graph rows are the training data of the MedTok artifact "
                     f"`{qa_config.get('medtok')}`, whose code embeddings form the prefix.")
    elif qa_config.get("medtok"):
        notes.append(f"The MedTok artifact `{qa_config.get('medtok')}` records no training data.")
    notes.append(f"Base model `{qa_config.get('base_model')}`: see its own card for its licence and training data.")
    hub = _hub_id(str(qa_config.get("base_model", "")))
    metadata = {
        **_metadata_licence(rows),
        "library_name": "peft" if qa_config.get("has_adapter") else "medtok-qa",
        "base_model": hub,
        "pipeline_tag": "text-generation",
        "tags": ["medical", "multiple-choice-qa", "lora", "prefix-tuning", "medtok",
                 f"prefix-{qa_config.get('prefix_mode')}",
                 *(["non-commercial-data"] if any(non_commercial(r["license"]) for r in rows) else [])],
    }
    if best and best.get("val_acc") is not None:
        quality = (f"Best validation accuracy **{best['val_acc']:.4f}** on {best.get('n_val')} held-out questions "
                   f"(epoch {best.get('epoch')}, step {best.get('step')}, NLL {best.get('val_nll'):.4f}). "
                   "The held-out ids are in `split.json`; test accuracies by tier come from `medtok-qa eval`.")
    else:
        quality = "No validation accuracy was measured (no held-out questions)."
    options = {k: v for k, v in qa_config.items() if k not in ("format", "version", "system_prompt",
                                                                  "letter_token_ids")}
    sections = [
        ("What it is", f"A multiple-choice medical QA model: `{qa_config.get('base_model')}` fine-tuned with LoRA, "
                       f"prefix method `{qa_config.get('prefix_mode')}` (linked medical codes become prefix "
                       f"embeddings in front of the question; MedTok: {MEDTOK_PAPER}). It scores the option "
                       "letters; load it with `qa.model.load_qa_checkpoint(folder)` or ask it questions with "
                       "`medtok-qa ask --checkpoint folder`."),
        ("Training data and licences", _licence_section(rows, notes)),
        ("Measured quality", quality),
        ("Config", _yaml_block(options) + ("\n\nTraining run: `train_config.yaml` beside this card."
                                           if train_config else "")),
        ("Limits", "- Trained and validated on MedDDx-style differential-diagnosis questions (2-5 options); "
                   "other question styles are untested.\n"
                   "- Small validation sets make the accuracy above noisy; compare methods with `medtok-qa "
                   "eval` (bootstrap intervals, McNemar).\n"
                   "- Research artifact: not for clinical decisions."),
    ]
    return render(metadata, f"MedTok-QA checkpoint ({qa_config.get('prefix_mode')})", sections)


def _read_artifact_config(path: str | None) -> dict:
    if not path:
        return {}
    file = Path(path) / "config.json"
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def read_yaml(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
