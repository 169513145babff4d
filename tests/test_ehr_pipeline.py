"""`medtok-qa ehr pipeline`: the whole EHR path at tiny size on the committed synthetic fixture, seeds
pooled into mean and spread, resumable by stage stamps, the published page, and one-line errors."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from ehr_fixtures import FIXTURE, tiny_medtok

from recipes.cli import main as medtok_qa

TINY = ["--data.meds_dir", str(FIXTURE), "--data.tasks", "next_hypertension,next_lipid,mortality_30d",
        "--data.max_len", "32", "--data.value_bins", "3", "--seeds", "0,1", "--model.hidden", "16", "--model.layers", "1",
        "--model.state_size", "4", "--model.embedding.projector_hidden", "8",
        "--pretrain.steps", "2", "--pretrain.batch_size", "4", "--finetune.steps", "2", "--finetune.batch_size", "4",
        "--pretrain.threads", "1", "--finetune.threads", "1", "--eval.n_boot", "10", "--eval.min_positives", "5"]
RUNS = "runs:\n  transformer: [learned, medtok_frozen]\n  mamba: [learned]\n"


def pipeline(tmp_path, *extra) -> dict:
    medtok_qa(["ehr", "pipeline", "--config", str(tmp_path / "p.yaml"), "--output", str(tmp_path / "out"),
                      "--medtok_artifact", str(tmp_path / "medtok"), *TINY, *map(str, extra)])
    return json.loads((tmp_path / "out" / "summary.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ehr_pipeline")
    tiny_medtok(tmp / "medtok")
    (tmp / "p.yaml").write_text(RUNS)
    summary = pipeline(tmp, "--publish", tmp / "docs/results/ehr_synthetic", "--page", tmp / "docs/results/ehr_synthetic.md")
    return tmp, summary


def test_every_variant_and_seed_is_trained_evaluated_and_pooled(first_run):
    tmp, summary = first_run
    methods = summary["methods"]
    assert set(methods) == {"transformer/learned", "transformer/medtok_frozen", "mamba/learned",
                            "hist_gradient_boosting (code counts + age)"}
    hyper = methods["transformer/learned"]["tasks"]["next_hypertension"]["all"]
    assert hyper["estimable"] and hyper["seeds"] == 2 and len(hyper["auprc"]["per_seed"]) == 2
    a = hyper["auprc"]
    assert a["mean"] == pytest.approx(sum(a["per_seed"]) / 2, abs=1e-3) and a["min"] <= a["mean"] <= a["max"]
    assert not methods["mamba/learned"]["tasks"]["mortality_30d"]["all"]["estimable"]
    assert "rare_codes_lt5" in methods["mamba/learned"]["tasks"]["next_lipid"]
    report = (tmp / "out/report.md").read_text()
    assert "not medicine" in report and "Not estimable" in report and "mortality_30d" in report
    assert (tmp / "out/auprc.png").stat().st_size > 5000
    card = (tmp / "out/README.md").read_text()
    assert "MIT licence" in card and "synthetic" in card
    lab = summary["data"]["value_bins"]  # the presets bin lab values: it reaches the report and the card
    assert lab["bins"] == 3 and 0 < lab["binned_events"] <= lab["numeric_events"]
    assert f"{lab['binned_events']}/{lab['numeric_events']} numeric events binned" in report and "//Q<k>" in card


def test_each_code_embedding_is_compared_with_the_learned_table_on_paired_seeds(first_run):
    tmp, summary = first_run
    (c,) = [c for c in summary["comparisons"] if c["task"] == "next_hypertension" and c["slice"] == "all"]
    assert (c["backbone"], c["code_embedding"], c["baseline"], c["seeds"]) == ("transformer", "medtok_frozen", "learned", [0, 1])
    methods = summary["methods"]  # the paired difference is the difference of the seeds' mean AUPRC
    mean = lambda m: methods[m]["tasks"]["next_hypertension"]["all"]["auprc"]["mean"]  # noqa: E731
    assert c["auprc"]["difference"] == pytest.approx(mean("transformer/medtok_frozen") - mean("transformer/learned"), abs=2e-4)
    lo, hi = c["auprc"]["ci95"]
    assert lo <= hi and -1 <= lo and hi <= 1
    assert all(c["backbone"] != "mamba" for c in summary["comparisons"])  # mamba ran the learned table alone
    assert "Paired differences from the `learned` code embedding" in (tmp / "out/report.md").read_text()
    scores = pd.read_parquet(tmp / "out/eval/scores.parquet")
    assert len([c for c in scores.columns if c.startswith("transformer/medtok_frozen")]) == 2


def test_the_published_page_links_to_the_published_files(first_run):
    tmp, _ = first_run
    page = tmp / "docs/results/ehr_synthetic.md"
    text = page.read_text()
    assert "measure the software, not medicine" in text and "not estimable" in text
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", text)]
    assert links and all((page.parent / link).is_file() for link in links)
    published = json.loads((tmp / "docs/results/ehr_synthetic/summary.json").read_text())
    assert published["methods"].keys() == first_run[1]["methods"].keys()
    commit = published["provenance"]["commit"]  # the numbers name the code that made them
    assert commit and f"Produced at commit {commit[:7]}" in text


def test_a_second_call_reuses_every_stage_and_a_change_reruns_only_what_it_touches(first_run):
    tmp, _ = first_run
    again = pipeline(tmp)
    assert all(t["reused"] for t in again["timings"]["stages"].values())
    changed = pipeline(tmp, "--finetune.steps", "3")
    ran = {name for name, t in changed["timings"]["stages"].items() if not t["reused"]}
    assert ran == {n for n in changed["timings"]["stages"] if n.startswith("finetune ")} | {"eval"}


def test_two_workers_train_the_same_models_as_one(first_run):
    tmp, summary = first_run
    out = tmp / "out_workers"
    medtok_qa(["ehr", "pipeline", "--config", str(tmp / "p.yaml"), "--output", str(out), "--medtok_artifact",
               str(tmp / "medtok"), *TINY, "--workers", "2"])
    parallel = json.loads((out / "summary.json").read_text())
    # the serial folder's finetunes may have been rerun by another test; its pretrains and summary are as first made
    losses = sorted((tmp / "out/runs").glob("*_pretrain/losses.jsonl"))
    assert len(losses) == 6  # 3 backbone x embedding pairs x 2 seeds
    for serial in losses:
        assert (out / "runs" / serial.parent.name / "losses.jsonl").read_text() == serial.read_text()
    assert parallel["methods"] == summary["methods"]  # the finetuned models score the same
    assert set(parallel["timings"]["stages"]) == set(summary["timings"]["stages"])


def test_runs_take_command_line_overrides(tmp_path):
    from commons.config import parse_config
    from recipes.ehr_pipeline import EhrPipelineConfig

    cfg = parse_config(EhrPipelineConfig, ["--config", "configs/ehr_demo.yaml", "--runs.mamba", "learned,text"])
    assert cfg.runs["mamba"] == ["learned", "text"] and "medtok_tokens" in cfg.runs["transformer"]


@pytest.mark.parametrize("yaml, argv, message", [
    ("runs:\n  rnn: [learned]\n", [], "unknown backbone 'rnn'"),
    ("runs:\n  mamba: [nope]\n", [], "unknown code embedding 'nope'"),
    ("", ["--data.meds_dir", "/nonexistent"], "is not a folder"),
    ("", ["--force", "everything"], "unknown stage"),
    ("", ["--data.fhir_dir", "/nonexistent"], "not both"),
    ("", ["--page", "x.md"], "page needs publish"),
])
def test_bad_input_is_one_error_line(yaml, argv, message, tmp_path, capsys):
    (tmp_path / "p.yaml").write_text(yaml or RUNS)
    with pytest.raises(SystemExit) as exit_info:
        medtok_qa(["ehr", "pipeline", "--config", str(tmp_path / "p.yaml"), "--output", str(tmp_path / "out"),
                   "--data.meds_dir", str(FIXTURE), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out" / "summary.json").exists()
