"""The knowledge-grounded QA presets through recipes.pipeline: the full preset's plan, and a
fresh-clone run of the quick variant at tiny sizes (tiny random LLaMA, a small MedTok)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from commons.config import parse_config
from qa.prefix_methods import method_names
from recipes import pipeline as pl

REPO = Path(__file__).resolve().parent.parent


def test_full_preset_plan(tmp_path):
    cfg = parse_config(pl.PipelineConfig, ["--config", str(REPO / "configs/pipeline_kgqa.yaml"),
                                           "--output", str(tmp_path / "run")])
    assert cfg.generate_kgqa and cfg.methods == method_names() and len(cfg.seeds) >= 3 and cfg.zero_shot
    stages = {s.name: s for s in pl.plan(cfg)}
    assert "link" not in stages and stages["kgqa"].sources
    questions = str((tmp_path / "run" / "kgqa" / "questions.jsonl").resolve())
    medtok = stages["medtok"].argv
    edges = medtok[medtok.index("--data.heldout_edges") + 1]
    assert edges == str((tmp_path / "run" / "kgqa" / "heldout_edges.csv").resolve())
    assert "kgqa" in stages["medtok"].depends
    for name, stage in stages.items():
        if name.startswith("finetune"):
            assert stage.argv[stage.argv.index("--data.train_file") + 1] == questions and "kgqa" in stage.depends
    ev = stages["eval"].argv
    assert ev[ev.index("--permutations") + 1] == "4"
    assert ev[ev.index("--tier_titles") + 1] == "Basic=in-graph test,Intermediate=validation,Expert=held-out test"
    assert ev[ev.index("--zero_shot") + 1] == "smollm2-135m-instruct"  # the fine-tunes' base model


def test_generator_code_is_part_of_the_stamp(tmp_path, monkeypatch):
    cfg = parse_config(pl.PipelineConfig, ["--config", str(REPO / "configs/pipeline_kgqa_quick.yaml"),
                                           "--output", str(tmp_path / "run")])
    before = {s.name: s.key for s in pl.plan(cfg)}
    real = pl._file_digest
    monkeypatch.setattr(pl, "_file_digest", lambda p: "changed" if p.name == "kgqa.py" else real(p))
    after = {s.name: s.key for s in pl.plan(cfg)}
    assert before["build"] == after["build"]
    assert all(before[n] != after[n] for n in before if n != "build")  # everything downstream reruns


def test_generate_kgqa_with_a_linked_file_is_a_config_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        pl.main(["--config", str(REPO / "configs/pipeline_kgqa_quick.yaml"), "--linked", str(tmp_path / "x.jsonl"),
                 "--dry_run", "true"])
    assert exc.value.code == 2 and "generate_kgqa" in capsys.readouterr().err


@pytest.mark.integration
def test_quick_preset_runs_at_tiny_sizes(tmp_path):
    from qa.tiny import build_tiny_lm

    preset = yaml.safe_load((REPO / "configs/pipeline_kgqa_quick.yaml").read_text())
    preset["output"] = str(tmp_path / "run")
    preset["kgqa"]["overrides"].update({"test_per_condition": 6, "max_train": 16})
    preset["medtok"]["overrides"].update({
        "data.max_codes": 300, "data.max_nodes": 8, "model.dim": 16, "model.codebook_size": 96,
        "init_samples": 96, "optim.batch_size": 64, "optim.link_batch": 16, "restart_every": 1000})
    preset["finetune"]["overrides"].update({
        "model.base_model": str(build_tiny_lm(tmp_path / "llama")), "model.dtype": "float32",
        "optim.batch_size": 4, "data.val_fraction": 0.25, "early_stop_patience": 0, "log_every": 1})
    preset["eval"]["overrides"].update({"bootstrap.n_resamples": 50})
    config = tmp_path / "preset.yaml"
    config.write_text(yaml.safe_dump(preset))
    done = subprocess.run([sys.executable, "-m", "recipes.pipeline", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    results = json.loads((run / "eval" / "results.json").read_text())
    # every built-in method was fine-tuned (the subprocess's registry: no method a test module registered)
    tuned = {p.name.rsplit("-seed", 1)[0] for p in (run / "qa").iterdir() if p.is_dir()}
    assert tuned >= {"none", "text", "medtok", "medtok-mean", "shuffled"}
    assert set(results["methods"]) >= {*tuned, "zero-shot"}
    assert results["dataset"]["Basic"]["n"] == 12 and results["dataset"]["Expert"]["n"] == 12
    assert results["tier_titles"]["Expert"] == "held-out test"
    assert "held-out test (n=12)" in (run / "eval" / "report.md").read_text()
    prov = results["provenance"]
    assert prov["seeds"] == [0] and "recipes.pipeline" in prov["command"] and "commit" in prov
    assert results["detectable_difference"]["tiers"]["Expert"] is None or \
        results["detectable_difference"]["tiers"]["Expert"] > 0.3
    medtok_cfg = yaml.safe_load((run / "medtok" / "config.yaml").read_text())
    assert medtok_cfg["data"]["heldout_edges"] == str((run / "kgqa" / "heldout_edges.csv").resolve())
