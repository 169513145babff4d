"""Questions as ``datasets.Dataset``: layout plug-ins (files and the MedMCQA hub layout) and the
Arrow cache of tokenized questions (a rerun calls the tokenizer zero times)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from disease_linking.layouts import HubLayout, get_layout, layout_names, load_question_dataset
from disease_linking.questions import (
    MCQFormatError,
    dataset_items,
    items_dataset,
    load_mcq,
    to_authors_layout,
    write_jsonl,
)
from finetune import train as train_cli
from qa.model import ModelOptions, build_qa_model
from qa.tiny import build_tiny_lm, tiny_questions
from qa.token_cache import CACHE_SUBDIR, fingerprint
from qa.training import EpochBatches
from recipes import evaluate as eval_cli

MEDDX = {"query": "Which drug treats beriberi?\nA: Niacin\nB: Thiamine\nC: Zinc\nD: Iron\n",
         "answer": "B", "sim_level_std": 0.05}
MEDMCQA_ROWS = {"id": ["m1", "m2", "m3"], "question": ["Which nerve supplies the deltoid?", "Drug of choice?", "Q3?"],
                "opa": ["Axillary", "A", "a"], "opb": ["Radial", "B", "b"], "opc": ["Ulnar", "C", "c"],
                "opd": ["Median", "D", "d"], "cop": [0, 3, -1],
                "subject_name": ["Anatomy", "Pharmacology", "Surgery"]}


# ---- layouts ---------------------------------------------------------------------------------------------
def test_every_builtin_layout_is_registered():
    assert layout_names() == ["auto", "linked", "meddx", "medmcqa", "medtok_authors"]
    assert isinstance(get_layout("medmcqa"), HubLayout) and get_layout("auto") is None


def _files(tmp_path: Path) -> dict[str, Path]:
    linked = tmp_path / "linked.jsonl"
    write_jsonl(linked, tiny_questions(5))
    authors = tmp_path / "authors.json"
    authors.write_text(json.dumps([to_authors_layout(it) for it in tiny_questions(3)]))
    meddx = tmp_path / "meddx.json"
    meddx.write_text(json.dumps({"q1": MEDDX, "q2": {**MEDDX, "answer": "C", "sim_level_std": 0.01}}))
    medmcqa = tmp_path / "medmcqa.jsonl"  # a local export of the hub dataset, one row per line
    rows = [dict(zip(MEDMCQA_ROWS, values, strict=True)) for values in zip(*MEDMCQA_ROWS.values(), strict=True)]
    medmcqa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"linked": linked, "medtok_authors": authors, "meddx": meddx, "medmcqa": medmcqa}


@pytest.mark.parametrize("layout", ["linked", "medtok_authors", "meddx", "medmcqa"])
def test_each_layout_loads_its_file_into_a_dataset_with_the_question_columns(tmp_path, layout):
    path = _files(tmp_path)[layout]
    dataset, skipped = load_question_dataset(path, layout)
    assert isinstance(dataset, Dataset) and skipped == []
    assert dataset.column_names == ["id", "question", "options", "answer", "tier", "sim_level_std",
                                    "medical_codes", "mentions", "subject"]
    items = dataset_items(dataset)
    if layout != "medmcqa":  # auto-detection reads the other three exactly as before
        assert items == load_mcq(path)[0] == dataset_items(load_question_dataset(path)[0])
    assert len(dataset) == {"linked": 5, "medtok_authors": 3, "meddx": 2, "medmcqa": 3}[layout]


def test_a_named_layout_rejects_records_of_another_layout(tmp_path):
    path = _files(tmp_path)["meddx"]
    with pytest.raises(MCQFormatError, match=r"q1: not a linked record \(no 'question'.*pass --layout auto"):
        load_question_dataset(path, "linked")
    dataset, skipped = load_question_dataset(path, "linked", skip_invalid=True)
    assert len(dataset) == 0 and len(skipped) == 2


def test_medmcqa_rows_map_onto_the_question_schema():
    rows = Dataset.from_dict(MEDMCQA_ROWS)  # what datasets.load_dataset returns, without the network
    items, skipped = get_layout("medmcqa").from_rows(rows, "medmcqa (test)")
    assert skipped == []
    first = items[0]
    assert (first.id, first.question, first.answer, first.subject) == ("m1", "Which nerve supplies the deltoid?",
                                                                      "A", "Anatomy")
    assert first.options == {"A": "Axillary", "B": "Radial", "C": "Ulnar", "D": "Median"}
    assert [it.answer for it in items] == ["A", "D", None]  # cop -1: the answer is hidden
    assert all(it.tier is None for it in items)
    assert dataset_items(items_dataset(items)) == items  # Arrow round trip, subject included
    assert first.to_json()["subject"] == "Anatomy" and "subject" not in tiny_questions(1)[0].to_json()


def test_medmcqa_bad_rows_go_through_the_one_validator():
    rows = Dataset.from_dict({**MEDMCQA_ROWS, "cop": [7, 1, 2], "opb": ["Radial", "", "b"]})
    with pytest.raises(MCQFormatError, match=r"medmcqa \(x\): m1: cop 7 is not an option index 0-3"):
        get_layout("medmcqa").from_rows(rows, "medmcqa (x)")
    items, skipped = get_layout("medmcqa").from_rows(rows, "medmcqa (x)", skip_invalid=True)
    assert [it.id for it in items] == ["m3"]
    assert skipped == ["m1: cop 7 is not an option index 0-3 (or -1 when hidden)", "m2: option B is empty"]


@pytest.mark.parametrize("main, argv, flag", [
    (eval_cli.main, ["--layout", "medmcqa", "--zero_shot", "default"], "--allow_network true"),
    (train_cli.main, ["--data.layout", "medmcqa", "--data.tier", ""], "--data.allow_network true"),
])
def test_the_hub_layout_refuses_without_the_network_option(tmp_path, capsys, main, argv, flag):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--output" if main is eval_cli.main else "--output_dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: layout medmcqa downloads openlifescienceai/medmcqa")
    assert flag in err[0]
    assert not out.exists()


# ---- the tokenized-question cache ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return str(build_tiny_lm(tmp_path_factory.mktemp("ds") / "llama"))


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDTOK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_SUBDIR


def _encoder(tiny_lm, **options):
    """A freshly loaded model's encoder (a new process would load the same), its tokenizer counted."""
    encoder = build_qa_model(ModelOptions(base_model=tiny_lm, dtype="float32", prefix_mode="none", **options),
                             lora=False).encoder
    calls = {"n": 0}
    for name in ("__call__", "encode", "apply_chat_template"):
        original = getattr(encoder.tokenizer, name)

        def counted(*args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(*args, **kwargs)

        if name == "__call__":  # a special method is looked up on the type: wrap it in a subclass
            cls = type(encoder.tokenizer)
            encoder.tokenizer.__class__ = type(cls.__name__, (cls,), {"__call__": counted})
        else:
            setattr(encoder.tokenizer, name, counted)
    return encoder, calls


def _epoch_batches(encoder, items, epoch: int, shuffle: bool = True) -> list[dict[str, torch.Tensor]]:
    return list(EpochBatches(items, encoder, seed=3, shuffle=shuffle, batch_size=4, grad_accum=1, rank=0,
                             world=1).epoch(epoch))


def test_the_second_run_reads_the_tokens_from_the_cache_without_calling_the_tokenizer(tiny_lm, cache):
    items = tiny_questions(12)
    first, first_calls = _encoder(tiny_lm)
    batches = _epoch_batches(first, items, epoch=0)
    assert first_calls["n"] >= len(items) and len(list(cache.glob("*.arrow"))) == 1
    second, second_calls = _encoder(tiny_lm)  # a rerun: new model, new tokenizer object, same files
    again = _epoch_batches(second, items, epoch=0)
    assert second_calls["n"] == 0
    assert len(again) == len(batches)
    for a, b in zip(batches, again, strict=True):  # the very same batches as the tokenizing run
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Scoring's path (file order, no shuffle) is its own entry, with the ids of direct encoding.
    direct = [first.encode(it).input_ids for it in items]
    assert [e.input_ids for e in second.encode_many(items)] == direct
    assert second_calls["n"] > 0 and len(list(cache.glob("*.arrow"))) == 2
    second_calls["n"] = 0
    assert [e.input_ids for e in second.encode_many(items)] == direct and second_calls["n"] == 0


def test_each_shuffled_epoch_is_its_own_cache_entry_and_unshuffled_epochs_share_one(tiny_lm, cache):
    items = tiny_questions(8)
    encoder, calls = _encoder(tiny_lm)
    epoch0 = _epoch_batches(encoder, items, epoch=0)
    epoch1 = _epoch_batches(encoder, items, epoch=1)
    assert len(list(cache.glob("*.arrow"))) == 2
    assert any(not torch.equal(a["labels"], b["labels"]) or not torch.equal(a["input_ids"], b["input_ids"])
               for a, b in zip(epoch0, epoch1, strict=True))  # other option orders, other tokens
    assert encoder.cache_key(items, (3, 0)) != encoder.cache_key(items, (3, 1))
    _epoch_batches(encoder, items, epoch=0, shuffle=False)
    n, entries = calls["n"], len(list(cache.glob("*.arrow")))
    _epoch_batches(encoder, items, epoch=1, shuffle=False)  # no shuffle: the epoch does not change the tokens
    assert calls["n"] == n and len(list(cache.glob("*.arrow"))) == entries == 3


def test_the_cache_key_covers_what_changes_the_tokens(tiny_lm, tmp_path):
    items = tiny_questions(6)
    encoder, _ = _encoder(tiny_lm)
    base = fingerprint(encoder.cache_key(items, (0, 0)))
    other_tok, _ = _encoder(str(build_tiny_lm(tmp_path / "other", vocab_size=280)))
    variants = {
        "questions": encoder.cache_key(tiny_questions(6, seed=1), (0, 0)),
        "seed": encoder.cache_key(items, (1, 0)),
        "epoch": encoder.cache_key(items, (0, 1)),
        "unshuffled": encoder.cache_key(items, None),
        "tokenizer": other_tok.cache_key(items, (0, 0)),
    }
    options = encoder.options
    for option, value in (("cutoff_len", 64), ("prefix_mode", "shuffled"), ("max_codes", 2)):
        encoder.options = dataclasses.replace(options, **{option: value})
        variants[option] = encoder.cache_key(items, (0, 0))
    encoder.options = dataclasses.replace(options, lora=dataclasses.replace(options.lora, r=2), dtype="bfloat16")
    assert fingerprint(encoder.cache_key(items, (0, 0))) == base  # LoRA, dtype: weights, not tokens
    prints = {name: fingerprint(key) for name, key in variants.items()}
    assert base not in prints.values() and len(set(prints.values())) == len(prints)


def test_a_second_training_run_tokenizes_nothing(tiny_lm, cache, tmp_path, monkeypatch):
    """Training and validation scoring both read their tokens back: a rerun's tokenizer only sees
    the five answer letters (looked up when the model is built)."""
    from transformers import AutoTokenizer

    from qa.training import DataOptions, OptimOptions, TrainConfig, train

    data = tmp_path / "tiny.jsonl"
    write_jsonl(data, tiny_questions(24))
    prompts = {"n": 0}
    cls = type(AutoTokenizer.from_pretrained(tiny_lm))
    original = cls.encode

    def counted(self, text, *args, **kwargs):
        prompts["n"] += len(text) > 1  # a prompt, not one of the letters A-E
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(cls, "encode", counted)

    def run(out: str) -> list[float]:
        train(TrainConfig(output_dir=str(tmp_path / out), save_every_steps=100, log_every=1, early_stop_patience=0,
                          model=ModelOptions(base_model=tiny_lm, dtype="float32", prefix_mode="none"),
                          data=DataOptions(train_file=str(data), val_fraction=0.25, limit_train=8, limit_val=4),
                          optim=OptimOptions(epochs=2, batch_size=4)))
        records = [json.loads(x) for x in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if r["event"] == "train"]

    losses = run("first")
    assert prompts["n"] > 0
    prompts["n"] = 0
    assert run("second") == losses and prompts["n"] == 0


def test_untiered_questions_train_on_every_question_unless_a_tier_is_asked_for(tmp_path):
    from commons.errors import UserError
    from qa.training import DataOptions, load_questions

    path = str(_files(tmp_path)["medmcqa"])
    assert len(load_questions(DataOptions(train_file=path, layout="medmcqa"))) == 3  # the layout's default tier: ""
    with pytest.raises(UserError, match='have no tiers; pass --data.tier ""'):
        load_questions(DataOptions(train_file=path, layout="medmcqa", tier="Intermediate"))
