"""MedFuse as the EHR pipeline's `medfuse` stage (issue 28): on the committed fixture at tiny size it runs
after eval, writes <output>/medfuse/results.json, is reused while its settings and the data are unchanged,
reruns alone when a MedFuse setting changes, lands in summary.json, report.md, the page and the published
folder; with medfuse disabled the pipeline is what it was."""

from __future__ import annotations

import json
import re

import pytest
from ehr_fixtures import FIXTURE

from recipes.cli import main as medtok_qa

TINY = ["--data.meds_dir", str(FIXTURE), "--data.tasks", "next_hypertension,next_lipid", "--data.max_len", "32",
        "--seeds", "0", "--model.hidden", "16", "--model.layers", "1", "--model.state_size", "4",
        "--pretrain.steps", "2", "--pretrain.batch_size", "4", "--finetune.steps", "2", "--finetune.batch_size", "4",
        "--eval.n_boot", "10", "--eval.min_positives", "5"]
# onset of hyperlipidaemia, one sample per subject: 1 held-out positive among 21, estimable at min 1
CONFIG = """runs:
  transformer: [learned]
medfuse:
  enabled: true
  cohort:
    tasks: [onset_hyperlipidemia_180d]
    shared_tasks: []
    min_test_positives: 1
    max_samples_per_subject: 1
  model: {feature_dim: 8, value_dim: 4, hidden: 8, heads: 2, layers: 1}
  train: {steps: 2, batch_size: 4}
  fusions: [mufuse, additive]
  baselines: [hgb]
  n_resamples: 10
"""
TASK = "onset_hyperlipidemia_180d"


def pipeline(tmp_path, *extra) -> dict:
    medtok_qa(["ehr", "pipeline", "--config", str(tmp_path / "p.yaml"), "--output", str(tmp_path / "out"),
               *TINY, *map(str, extra)])
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def ran(summary: dict) -> set[str]:
    return {name for name, t in summary["timings"]["stages"].items() if not t["reused"]}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ehr_pipeline_medfuse")
    (tmp / "p.yaml").write_text(CONFIG)
    summary = pipeline(tmp, "--publish", tmp / "docs/results/ehr_synthetic", "--page", tmp / "docs/results/ehr_synthetic.md")
    return tmp, summary


def test_the_stage_runs_medfuse_on_the_pipelines_meds_folder(first_run):
    tmp, summary = first_run
    assert "medfuse" in ran(summary)
    results = json.loads((tmp / "out/medfuse/results.json").read_text())
    assert results["meds_dir"] == str(FIXTURE) and results["seeds"] == [0]
    assert set(results["tasks"][TASK]["methods"]) == {"medfuse:mufuse", "medfuse:additive", "hgb"}
    task = summary["medfuse"]["tasks"][TASK]
    assert task["estimable"] and (task["test_samples"], task["test_positives"]) == (21, 1)
    for m in task["methods"].values():
        assert "held_out_probs_by_seed" not in m  # the summary carries metrics, results.json the predictions
        assert all(0 <= m[k]["low"] <= m[k]["high"] <= 1 and 0 <= m[k]["mean"] <= 1 for k in ("auroc", "accuracy"))
    assert set(task["auprc_differences"]) == {"medfuse:mufuse - medfuse:additive", "medfuse:mufuse - hgb"}


def test_report_page_and_published_folder_hold_the_medfuse_section(first_run):
    tmp, _ = first_run
    report = (tmp / "out/report.md").read_text()
    assert "## MedFuse: fusion ablation and baselines" in report and f"### {TASK}" in report
    assert "| medfuse:mufuse |" in report and "| hgb |" in report
    page = tmp / "docs/results/ehr_synthetic.md"
    text = page.read_text()
    assert "## MedFuse" in text and "| medfuse:additive |" in text
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", text)]
    assert any(link.endswith("medfuse/results.md") for link in links)
    assert all((page.parent / link).is_file() for link in links)
    published = tmp / "docs/results/ehr_synthetic/medfuse"
    assert (published / "results.md").read_text() == (tmp / "out/medfuse/results.md").read_text()
    assert json.loads((published / "results.json").read_text())["tasks"][TASK]["estimable"]


def test_a_second_call_reuses_it_and_a_medfuse_setting_reruns_only_it(first_run):
    tmp, _ = first_run
    assert not ran(pipeline(tmp))
    changed = pipeline(tmp, "--medfuse.train.steps", "3")
    assert ran(changed) == {"medfuse"}
    assert json.loads((tmp / "out/medfuse/results.json").read_text())["train"]["steps"] == 3


def test_disabled_the_pipeline_is_ehrmamba_alone(first_run):
    tmp, _ = first_run
    summary = pipeline(tmp, "--medfuse.enabled", "false")
    assert not ran(summary) and "medfuse" not in summary["timings"]["stages"] and "medfuse" not in summary
    assert "MedFuse" not in (tmp / "out/report.md").read_text()


def test_force_names_the_medfuse_stage():
    from commons.config import parse_config
    from recipes.ehr_pipeline import EhrPipelineConfig

    cfg = parse_config(EhrPipelineConfig, ["--config", "configs/ehr_demo.yaml", "--force", "medfuse"])
    assert cfg.force == ["medfuse"] and cfg.medfuse.enabled and cfg.medfuse.fusions == ["mufuse", "additive", "concat"]
    full = parse_config(EhrPipelineConfig, ["--config", "configs/ehr_full.yaml"])
    assert full.medfuse.enabled and full.medfuse.baselines == ["gru", "hgb"] and full.seeds == [0, 1, 2]


@pytest.mark.parametrize("argv, message", [
    (["--medfuse.cohort.meds_dir", "/elsewhere"], "medfuse.cohort.meds_dir comes from data.meds_dir"),
    (["--medfuse.cohort.source", "mimic_iv"], "medfuse.cohort.source comes from data.source"),
    (["--medfuse.fusions", "nope"], "medfuse.fusions"),
    (["--medfuse.n_resamples", "1"], "medfuse.n_resamples must satisfy"),
])
def test_bad_medfuse_options_are_one_error_line(argv, message, tmp_path, capsys):
    (tmp_path / "p.yaml").write_text(CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        medtok_qa(["ehr", "pipeline", "--config", str(tmp_path / "p.yaml"), "--output", str(tmp_path / "out"),
                   "--data.meds_dir", str(FIXTURE), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_the_standalone_medfuse_configs_read_what_a_committed_command_makes():
    """configs/ehr/*.yaml parse, and each MEDS folder they read is the committed fixture or the folder the
    `ehr data` command in the file's header writes (`--output_dir D` -> `D_meds`)."""
    from pathlib import Path

    from commons.config import parse_config
    from ehr.medfuse.run import MedFuseEvalConfig
    from ehr.medfuse.transfer import TransferConfig

    for name, cls in [("medfuse_synthetic.yaml", MedFuseEvalConfig), ("medfuse_transfer.yaml", TransferConfig)]:
        path = Path("configs/ehr") / name
        cfg = parse_config(cls, ["--config", str(path)])
        made = [f"{d}_meds" for d in re.findall(r"medtok-qa ehr data .*--output_dir (\S+)", path.read_text())]
        cohorts = [cfg.cohort] if cls is MedFuseEvalConfig else [cfg.source, cfg.target]
        for cohort in cohorts:
            assert cohort.meds_dir in made or Path(cohort.meds_dir).resolve() == FIXTURE, (name, cohort.meds_dir)
        assert f"--config configs/ehr/{name}" in path.read_text()  # the run command is written down
