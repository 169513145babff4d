"""`medtok-qa ehr data|pretrain|finetune|eval` end to end on both fixtures (the same commands), and
the one-line errors."""

from __future__ import annotations

import json

import pytest
from ehr_fixtures import FIXTURE, write_mimic_like

from recipes.cli import main as medtok_qa

TINY = ["--model.backbone", "transformer", "--model.hidden", "16", "--model.layers", "1",
        "--train.steps", "2", "--train.batch_size", "4"]


def run(*argv):
    return medtok_qa(["ehr", *map(str, argv)])


def test_synthetic_cohort_end_to_end(tmp_path):
    data, pre, mpf, ev = (tmp_path / n for n in ("data", "pre", "mpf", "eval"))
    run("data", "--meds_dir", FIXTURE, "--output_dir", data, "--tasks", "next_hypertension,next_lipid,mortality_30d",
        "--max_len", "64")
    report = json.loads((data / "mapping_report.json").read_text())
    assert report["source"] == "clinosim" and report["unmapped"]
    run("pretrain", "--data", data, "--output_dir", pre, *TINY)
    run("finetune", "--data", data, "--init", pre, "--output_dir", mpf, *TINY)
    run("eval", "--data", data, "--runs", mpf, "--output_dir", ev, "--n_boot", "10", "--min_positives", "5")
    metrics = json.loads((ev / "metrics.json").read_text())
    assert "measure the software" in metrics["note"]
    methods = metrics["results"]
    assert set(methods) == {"transformer/learned (mpf)", "hist_gradient_boosting (code counts + age)"}
    hyper = methods["transformer/learned (mpf)"]["next_hypertension"]["all"]
    assert hyper["estimable"] and 0 <= hyper["auroc"] <= 1 and len(hyper["ci95"]["auprc"]) == 2
    assert not methods["transformer/learned (mpf)"]["mortality_30d"]["all"]["estimable"]
    text = (ev / "report.md").read_text()
    assert "n/e" in text and "Rare/unseen-code slice" in text and "not medicine" in text


def test_mimic_shaped_meds_runs_through_the_same_commands(tmp_path):
    meds = write_mimic_like(tmp_path / "mimic")
    run("data", "--meds_dir", meds, "--source", "mimic_iv", "--output_dir", tmp_path / "data")
    run("finetune", "--data", tmp_path / "data", "--output_dir", tmp_path / "mpf", *TINY)
    run("eval", "--data", tmp_path / "data", "--runs", tmp_path / "mpf", "--output_dir", tmp_path / "eval",
        "--n_boot", "10")
    assert "n/e" in (tmp_path / "eval" / "report.md").read_text()  # three subjects: nothing is estimable


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown ehr step"),
    (["pretrain"], "--data is required"),
    (["pretrain", "--data", "/nonexistent"], "not a prepared EHR folder"),
    (["data", "--meds_dir", "/nonexistent", "--output_dir", "{tmp}/d"], "not a MEDS folder"),
    (["data", "--meds_dir", "{fixture}", "--source", "nope", "--output_dir", "{tmp}/d"], "unknown code map"),
    (["pretrain", "--data", "x", "--model.code_embedding", "nope"], "code_embedding must be one of"),
    (["eval", "--data", "x", "--n_boot", "1"], "n_boot"),
])
def test_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, fixture=FIXTURE) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        run(*argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "d").exists()
