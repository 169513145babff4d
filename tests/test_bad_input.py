"""Bad input over every entry point, table-driven: exit code 2, exactly one ``error:`` line that
names the problem, no traceback, and nothing that existed before changed (or appeared)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from commons.integrity import write_manifest
from disease_linking.questions import write_jsonl
from finetune import train as train_cli
from qa.model import ModelOptions
from qa.tiny import TINY_CODES, build_tiny_lm, build_tiny_medtok, tiny_questions
from qa.training import DataOptions, OptimOptions, TrainConfig, train
from recipes import ask as ask_cli
from recipes import build as build_cli
from recipes import evaluate as eval_cli
from recipes import finetune as launch_cli
from recipes import link as link_cli
from recipes import linking_quality, pipeline
from recipes import train_tokenizer as medtok_cli

ITEM = {"id": "x-1", "question": "A patient has fever. Which is most likely?", "options": {"A": "flu", "B": "cold"},
        "answer": "A", "tier": "Intermediate"}


def _jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, str]:
    """Every file the cases refer to, created once; the cases must leave all of it untouched."""
    root = tmp_path_factory.mktemp("bad")
    w = {"root": str(root), "repo": str(Path(__file__).resolve().parent.parent), "llama": str(build_tiny_lm(root / "llama")),
         "medtok": str(build_tiny_medtok(root / "medtok", TINY_CODES))}
    write_jsonl(root / "linked.jsonl", tiny_questions(24))
    w["linked"] = str(root / "linked.jsonl")
    bad = {
        "gap": [{**ITEM, "options": {"A": "flu", "C": "cold"}}],
        "answer_z": [{**ITEM, "answer": "Z"}],
        "option_f": [{**ITEM, "options": {"A": "flu", "B": "cold", "F": "mumps"}}],
        "options_list": [{**ITEM, "options": ["flu", "cold"]}],
        "mention_key": [{**ITEM, "mentions": [{"text": "fever", "start": 12, "end": 17, "field": "stem",
                                               "codes": [], "colour": "red"}]}],
        "mention_span": [{**ITEM, "mentions": [{"text": "fever", "start": 12, "end": 999, "field": "stem"}]}],
        "mention_field": [{**ITEM, "mentions": [{"text": "x", "start": 0, "end": 1, "field": "option:E"}]}],
        "code_score": [{**ITEM, "mentions": [{"text": "fever", "start": 12, "end": 17, "field": "stem",
                                              "codes": [{"system": "ICD10CM", "code": "R50.9", "score": "high"}]}]}],
        "duplicate": [ITEM, {**ITEM, "question": "Another stem?"}],
        "mixed_tiers": [ITEM, {**ITEM, "id": "x-2", "tier": None}],
        "unknown_tier": [{**ITEM, "tier": "Hard"}],
    }
    for name, records in bad.items():
        w[name] = _jsonl(root / f"{name}.jsonl", records)
    (root / "latin1.jsonl").write_bytes(json.dumps({**ITEM, "question": "Fi\u00e8vre?"}, ensure_ascii=False).encode("latin-1") + b"\n")
    w["latin1"] = str(root / "latin1.jsonl")
    (root / "broken.jsonl").write_text('{"id": "x", "question": \n')
    w["broken_json"] = str(root / "broken.jsonl")
    (root / "bad.yaml").write_text("optim: [unclosed\n")
    w["bad_yaml"] = str(root / "bad.yaml")
    (root / "a_file").write_text("not a folder\n")
    w["a_file"] = str(root / "a_file")
    (root / "a_dir").mkdir()
    w["a_dir"] = str(root / "a_dir")

    damaged = root / "damaged_medtok"  # one flipped byte in the token table, manifest kept
    damaged.mkdir()
    for f in Path(w["medtok"]).iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    table = bytearray((damaged / "token_table.safetensors").read_bytes())
    table[-3] ^= 0xFF
    (damaged / "token_table.safetensors").write_bytes(bytes(table))
    w["damaged_medtok"] = str(damaged)
    nan = root / "nan_medtok"  # NaN embeddings written with a matching manifest: the table check catches it
    tensors = load_file(str(Path(w["medtok"]) / "token_table.safetensors"))
    tensors["embeddings"][2, :] = float("nan")
    nan.mkdir()
    for f in Path(w["medtok"]).iterdir():
        if f.name not in ("token_table.safetensors", "manifest.json"):
            (nan / f.name).write_bytes(f.read_bytes())
    save_file(tensors, str(nan / "token_table.safetensors"))
    write_manifest(nan, ("config.json", "model.safetensors", "vocab.parquet", "token_table.safetensors"))
    w["nan_medtok"] = str(nan)

    finished = root / "finished"  # a finished fine-tune: rerunning it with other settings must not touch it
    train(TrainConfig(output_dir=str(finished), save_every_steps=100, early_stop_patience=0,
                      model=ModelOptions(base_model=w["llama"], medtok=w["medtok"], dtype="float32"),
                      data=DataOptions(train_file=w["linked"], val_fraction=0.25, limit_train=8, limit_val=4),
                      optim=OptimOptions(epochs=1, batch_size=4, max_steps=1)))
    w["finished"] = str(finished)
    w["finished_cfg"] = str(finished / "train_config.yaml")
    for name, edit in (("broken_config", lambda d: (d / "qa_config.json").write_text("{not json")),
                       ("truncated_adapter", lambda d: (d / "adapter_model.safetensors").write_bytes(
                           (d / "adapter_model.safetensors").read_bytes()[:40]))):
        ckpt = root / name
        ckpt.mkdir()
        for f in (finished / "best").iterdir():
            (ckpt / f.name).write_bytes(f.read_bytes())
        edit(ckpt)
        w[name] = str(ckpt)
    previous = root / "previous_eval"  # results of an earlier evaluation
    previous.mkdir()
    (previous / "results.json").write_text('{"earlier": true}\n')
    (previous / "eval_config.yaml").write_text("output: previous\n")
    w["previous_eval"] = str(previous)
    return w


TRAIN = train_cli.main
FT = ["--medtok", "{medtok}", "--base_model", "{llama}", "--data.train_file", "{linked}", "--output_dir", "{root}/ft"]
EVAL = ["--data", "{linked}", "--output", "{previous_eval}"]

CASES = [
    # fine-tuning: numbers, names and files checked before anything is written
    ("ft-epochs-negative", TRAIN, FT + ["--optim.epochs", "-1"], "optim.epochs must satisfy 1 <= epochs"),
    ("ft-batch-zero", TRAIN, FT + ["--optim.batch_size", "0"], "optim.batch_size must satisfy 1 <="),
    ("ft-lr-nan", TRAIN, FT + ["--optim.lr", "nan"], "optim.lr must be a finite number"),
    ("ft-lr-text", TRAIN, FT + ["--optim.lr", "fast"], "optim.lr expects float"),
    ("ft-epochs-float", TRAIN, FT + ["--optim.epochs", "1.5"], "optim.epochs expects int"),
    ("ft-unknown-method", TRAIN, FT + ["--prefix_mode", "medtk"], "unknown prefix method 'medtk'; registered:"),
    ("ft-lora-dropout", TRAIN, FT + ["--model.lora.dropout", "1.5"], "model.lora.dropout must satisfy"),
    ("ft-val-fraction", TRAIN, FT + ["--data.val_fraction", "1"], "data.val_fraction must satisfy"),
    ("ft-tier", TRAIN, FT + ["--data.tier", "Hard"], "data.tier must be one of"),
    ("ft-dtype", TRAIN, FT + ["--model.dtype", "fp8"], "model.dtype must be one of"),
    ("ft-code-fields", TRAIN, FT + ["--model.code_fields", "options"], "model.code_fields must be one of"),
    ("ft-unknown-option", TRAIN, FT + ["--optim.learning_rate", "1"], "unknown option optim.learning_rate"),
    ("ft-two-values", TRAIN, FT + ["--optim.lr", "1e-4", "2e-4"], "optim.lr takes one value, got 2: 1e-4 2e-4"),
    ("ft-report-to", TRAIN, FT + ["--report_to", "tensorbord"], "report_to has unknown tracker 'tensorbord'"),
    ("ft-missing-config", TRAIN, ["--config", "{root}/nope.yaml"], "config file {root}/nope.yaml does not exist"),
    ("ft-bad-yaml", TRAIN, ["--config", "{bad_yaml}"], "is not valid YAML"),
    ("ft-missing-data", TRAIN, FT + ["--data.train_file", "{root}/nope.jsonl"], "nope.jsonl does not exist"),
    ("ft-data-is-dir", TRAIN, FT + ["--data.train_file", "{a_dir}"], "is a directory"),
    ("ft-options-gap", TRAIN, FT + ["--data.train_file", "{gap}"], "consecutive letters from A, got A, C"),
    ("ft-answer-z", TRAIN, FT + ["--data.train_file", "{answer_z}"], "answer 'Z' is not an option letter"),
    ("ft-option-f", TRAIN, FT + ["--data.train_file", "{option_f}"], "consecutive letters from A, got A, B, F"),
    ("ft-options-list", TRAIN, FT + ["--data.train_file", "{options_list}"], "'options' must be an object"),
    ("ft-mention-key", TRAIN, FT + ["--data.train_file", "{mention_key}"], "unknown key 'colour'"),
    ("ft-mention-span", TRAIN, FT + ["--data.train_file", "{mention_span}"], "span 12-999 lies outside"),
    ("ft-mention-field", TRAIN, FT + ["--data.train_file", "{mention_field}"], "field 'option:E' must be"),
    ("ft-code-score", TRAIN, FT + ["--data.train_file", "{code_score}"], "code score 'high' is not a finite"),
    ("ft-duplicate-ids", TRAIN, FT + ["--data.train_file", "{duplicate}"], "duplicate question id"),
    ("ft-mixed-tiers", TRAIN, FT + ["--data.train_file", "{mixed_tiers}"], "no tier while 1 other"),
    ("ft-unknown-tier", TRAIN, FT + ["--data.train_file", "{unknown_tier}"], "tier 'Hard' is not one of"),
    ("ft-latin1", TRAIN, FT + ["--data.train_file", "{latin1}"], "is not UTF-8 text"),
    ("ft-broken-json", TRAIN, FT + ["--data.train_file", "{broken_json}"], "not valid JSON"),
    ("ft-layout-mismatch", TRAIN, FT + ["--data.layout", "meddx"], "not a meddx record (no 'query'"),
    ("ft-unknown-layout", TRAIN, FT + ["--data.layout", "medqa"], "data.layout must be one of auto, linked"),
    ("ft-hub-no-network", TRAIN, FT + ["--data.train_file", "", "--data.layout", "medmcqa"],
     "pass --data.allow_network true to allow it"),
    ("ft-missing-artifact", TRAIN, FT + ["--medtok", "{root}/no_artifact"], "no_artifact does not exist"),
    ("ft-damaged-artifact", TRAIN, FT + ["--medtok", "{damaged_medtok}"], "differs from the sha256 recorded"),
    ("ft-nan-artifact", TRAIN, FT + ["--medtok", "{nan_medtok}"], "NaN or infinite values for 1 code"),
    ("ft-output-is-file", TRAIN, FT + ["--output_dir", "{a_file}"], "is a file; give a folder path"),
    ("ft-changed-settings", TRAIN, ["--config", "{finished_cfg}", "--optim.lr", "0.01"],
     "holds a run with other settings (optim.lr: 0.0002 -> 0.01)"),
    ("ft-missing-deepspeed", TRAIN, FT + ["--deepspeed_config", "{root}/ds.json"], "ds.json (--deepspeed_config) does not exist"),
    ("launch-missing-accelerate-config", launch_cli.main, ["--config_file", "{root}/acc.yaml"] + FT,
     "accelerate config file {root}/acc.yaml does not exist"),
    ("launch-bad-option", launch_cli.main, ["--config_file", "{repo}/configs/accelerate/cpu.yaml"] + FT
     + ["--optim.epochs", "0"], "optim.epochs must satisfy"),
    # evaluation
    ("eval-unknown-tier", eval_cli.main, EVAL + ["--zero_shot", "{llama}", "--tiers", "Hard"], "unknown tier 'Hard'"),
    ("eval-nothing", eval_cli.main, EVAL, "nothing to evaluate"),
    ("eval-not-checkpoint", eval_cli.main, EVAL + ["--checkpoints", "{a_dir}"], "is not a QA checkpoint"),
    ("eval-broken-qa-config", eval_cli.main, EVAL + ["--checkpoints", "{broken_config}"], "qa_config.json is not valid JSON"),
    ("eval-confidence", eval_cli.main, EVAL + ["--zero_shot", "{llama}", "--bootstrap.confidence_level", "1.5"],
     "bootstrap.confidence_level must satisfy"),
    ("eval-hub-no-network", eval_cli.main, ["--layout", "medmcqa", "--output", "{previous_eval}", "--zero_shot",
                                            "{llama}"], "pass --allow_network true to allow it"),
    ("eval-duplicate-ids", eval_cli.main, ["--data", "{duplicate}", "--output", "{previous_eval}", "--zero_shot", "{llama}"],
     "duplicate question id"),
    ("eval-output-is-file", eval_cli.main, ["--data", "{linked}", "--output", "{a_file}", "--zero_shot", "{llama}"],
     "is a file"),
    # --force true: previous_eval holds another evaluation, which is refused before any model loads
    ("eval-truncated-adapter", eval_cli.main, EVAL + ["--checkpoints", "{truncated_adapter}", "--force", "true"],
     "adapter_model.safetensors differs from the sha256"),
    # interactive QA
    ("ask-not-checkpoint", ask_cli.main, ["--checkpoint", "{a_dir}", "--question", "Q?\nA: a\nB: b"], "is not a QA checkpoint"),
    ("ask-bad-argument", ask_cli.main, ["--checkpoint", "{finished}", "--temperature", "2"], "unrecognized arguments"),
    ("ask-truncated-adapter", ask_cli.main, ["--checkpoint", "{truncated_adapter}", "--question", "Q?\nA: a\nB: b"],
     "adapter_model.safetensors differs from the sha256"),
    # linking
    ("link-output-is-dir", link_cli.main, ["--input", "{linked}", "--output", "{a_dir}"], "--output {a_dir} is a directory"),
    ("link-authors-under-file", link_cli.main, ["--input", "{linked}", "--output", "{root}/l.jsonl",
                                                "--authors_output", "{a_file}/a.json"], "cannot write into"),
    ("link-missing-input", link_cli.main, ["--input", "{root}/nope.json", "--output", "{root}/l.jsonl"], "does not exist"),
    ("link-latin1", link_cli.main, ["--input", "{latin1}", "--output", "{root}/l.jsonl"], "is not UTF-8 text"),
    ("link-unknown-layout", link_cli.main, ["--layout", "medqa", "--output", "{root}/l.jsonl"],
     "layout must be one of auto, linked"),
    ("link-hub-no-network", link_cli.main, ["--layout", "medmcqa", "--output", "{root}/l.jsonl"],
     "pass --allow_network true to allow it"),
    ("link-layout-mismatch", link_cli.main, ["--input", "{linked}", "--layout", "meddx", "--output", "{root}/l.jsonl"],
     "not a meddx record (no 'query'"),
    ("quality-unknown-option", linking_quality.main, ["--thresholds", "0.8", "--gold_file", "x"], "unknown option gold_file"),
    # MedTok
    ("medtok-epochs-zero", medtok_cli.main, ["--optim.epochs", "0", "--output_dir", "{root}/mt"], "optim.epochs must satisfy"),
    ("medtok-batch-one", medtok_cli.main, ["--optim.batch_size", "1", "--output_dir", "{root}/mt"], "optim.batch_size"),
    ("medtok-text-hidden-negative", medtok_cli.main, ["--model.text_hidden", "-1", "--output_dir", "{root}/mt"],
     "model.text_hidden must satisfy 0 <= text_hidden"),
    ("medtok-hierarchy-block-negative", medtok_cli.main, ["--optim.hierarchy_block", "-2", "--output_dir", "{root}/mt"],
     "optim.hierarchy_block must satisfy"),
    ("medtok-top-k-text", medtok_cli.main, ["--model.top_k", "many", "--output_dir", "{root}/mt"], "model.top_k expects int"),
    ("build-unknown-option", build_cli.main, ["--colour", "red"], "unknown option colour"),
    ("medtok-section-value", medtok_cli.main, ["--optim", "3", "--output_dir", "{root}/mt"],
     "--optim is a group of options; set one as --optim.<name> value"),
    # the pipeline
    ("pipeline-unknown-method", pipeline.main, ["--output", "{root}/p", "--methods", "medtok,foo"], "unknown prefix method 'foo'"),
    ("pipeline-no-seeds", pipeline.main, ["--output", "{root}/p", "--seeds", ""], "seeds is empty"),
    ("pipeline-launcher", pipeline.main, ["--output", "{root}/p", "--launcher", "torchrun"], "launcher must be one of"),
    ("pipeline-missing-linked", pipeline.main, ["--output", "{root}/p", "--medtok_artifact", "{medtok}",
                                                "--linked", "{root}/nope.jsonl"], "nope.jsonl does not exist"),
]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name, main, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_exit_2_and_changes_nothing(w, capsys, name, main, argv, message):
    root = Path(w["root"])
    before = tree_digest(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([a.format(**w) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert message.format(**w) in errors[0], errors[0]
    assert tree_digest(root) == before  # nothing written, nothing changed


def test_at_least_forty_cases_over_every_entry_point():
    mains = {c[1] for c in CASES}
    assert len(CASES) >= 40
    assert mains == {TRAIN, launch_cli.main, eval_cli.main, ask_cli.main, link_cli.main, linking_quality.main,
                     medtok_cli.main, build_cli.main, pipeline.main}


def test_a_run_folder_with_other_settings_resumes_only_when_they_match(tmp_path):
    """The rule both trainers (MedTok, QA) apply before writing into an output folder."""
    import dataclasses

    import yaml

    from commons.config import ConfigError
    from commons.runident import save_run_config as save_config
    from commons.runident import starts_fresh
    from medtok_core.train import TrainConfig as MedTokConfig

    saved = tmp_path / "config.yaml"
    cfg = MedTokConfig(output_dir=str(tmp_path))
    assert starts_fresh(cfg, saved, tmp_path) is False  # nothing there: a new run (no clearing needed)
    save_config(cfg, saved)
    assert starts_fresh(cfg, saved, tmp_path) is False  # same settings: resume
    other = MedTokConfig(output_dir=str(tmp_path), seed=3)
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(seed: 0 -> 3\)"):
        starts_fresh(other, saved, tmp_path)
    other.force = True
    assert starts_fresh(other, saved, tmp_path) is True
    # A run saved before an option existed ran as its default does: it resumes...
    older = yaml.safe_load(saved.read_text())
    del older["optim"]["link_batch"], older["seed"]
    saved.write_text(yaml.safe_dump(older))
    assert starts_fresh(cfg, saved, tmp_path) is False
    # ...unless the option is now set to something else.
    with pytest.raises(ConfigError, match=r"other settings \(optim.link_batch: 128 -> 7\)"):
        starts_fresh(MedTokConfig(output_dir=str(tmp_path), optim=dataclasses.replace(cfg.optim, link_batch=7)),
                     saved, tmp_path)
