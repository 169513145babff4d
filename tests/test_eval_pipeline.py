"""recipes.pipeline: the plan, stamps (skip what is up to date, redo what changed), timings."""

import json
import sys
from pathlib import Path

import pytest

from commons.config import parse_config
from commons.errors import UserError
from qa.prefix_methods import method_names
from recipes import pipeline as pl
from recipes.pipeline import PipelineConfig, Stage

REPO = Path(__file__).resolve().parent.parent


def test_quick_config_file_is_the_embedded_default():
    assert parse_config(PipelineConfig, ["--config", str(REPO / "configs/pipeline_quick.yaml")]) == PipelineConfig()


def test_full_config_has_several_seeds_and_all_methods():
    full = parse_config(PipelineConfig, ["--config", str(REPO / "configs/pipeline_full.yaml")])
    assert len(full.seeds) >= 3
    assert full.methods == method_names()  # every registered prefix method
    assert {"none", "text", "medtok-mean", "medtok", "shuffled", "medtok-options", "medtok-attn"} <= set(full.methods)
    assert full.output != PipelineConfig().output


def test_plan_wires_the_stages(tmp_path, monkeypatch):
    monkeypatch.setattr(pl, "_config_args", lambda opts: [])  # stage configs may not exist yet
    cfg = PipelineConfig(output=str(tmp_path / "p"), dataset=str(tmp_path / "q.json"),
                         methods=["none", "medtok"], seeds=[0, 1])
    stages = pl.plan(cfg)
    names = [s.name for s in stages]
    assert names == ["build", "medtok", "link", "finetune none seed 0", "finetune none seed 1",
                     "finetune medtok seed 0", "finetune medtok seed 1", "reference", "eval"]
    medtok_ft = stages[names.index("finetune medtok seed 1")]
    assert "medtok" in medtok_ft.depends and "--medtok" in medtok_ft.argv
    none_ft = stages[names.index("finetune none seed 0")]
    assert none_ft.argv[none_ft.argv.index("--medtok") + 1] == "null"
    assert medtok_ft.argv[medtok_ft.argv.index("--seed") + 1] == "1"
    assert "medtok" not in stages[names.index("finetune none seed 0")].depends
    ev = stages[-1]
    assert len(ev.argv[ev.argv.index("--checkpoints") + 1].split(",")) == 4
    assert "--zero_shot" in ev.argv
    assert len({s.key for s in stages}) == len(stages)  # per-stage stamps differ


def _fake_stages(out: Path, config: Path) -> list[Stage]:
    """Two stages writing files with plain python; the second reads the first's output."""
    first, second = out / "a.txt", out / "b.txt"
    write_a = "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text(open(sys.argv[2]).read())"
    write_b = "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text(open(sys.argv[2]).read() + '!')"
    return [Stage("build", "build", "A", [sys.executable, "-c", write_a, str(first), str(config)], [first]),
            Stage("eval", "eval", "B", [sys.executable, "-c", write_b, str(second), str(first)], [second],
                  depends=["build"])]


def test_rerun_reuses_and_changed_input_redoes_dependants(tmp_path, monkeypatch, capsys):
    out, config = tmp_path / "run", tmp_path / "settings.yaml"
    config.write_text("x: 1\n")
    monkeypatch.setattr(pl, "build_stages", lambda cfg: _fake_stages(out, config))
    cfg = PipelineConfig(output=str(out))

    first = pl.run_pipeline(cfg)
    assert [s["skipped"] for s in first["stages"]] == [False, False]
    assert (out / "b.txt").read_text() == "x: 1\n!"
    assert json.loads((out / "timings.json").read_text())["by_group"]["eval"] >= 0

    again = pl.run_pipeline(cfg)
    assert [s["skipped"] for s in again["stages"]] == [True, True]
    assert "up to date" in capsys.readouterr().out

    config.write_text("x: 2\n")  # an input file changed: its stage and everything after it rerun
    third = pl.run_pipeline(cfg)
    assert [s["skipped"] for s in third["stages"]] == [False, False]
    assert (out / "b.txt").read_text() == "x: 2\n!"

    (out / "b.txt").unlink()  # a missing output reruns that stage only
    fourth = pl.run_pipeline(cfg)
    assert [s["skipped"] for s in fourth["stages"]] == [True, False]

    forced = pl.run_pipeline(PipelineConfig(output=str(out), force=["build"]))
    assert [s["skipped"] for s in forced["stages"]] == [False, False]


def test_failing_stage_is_one_line_error_and_not_stamped(tmp_path, monkeypatch):
    out = tmp_path / "run"
    bad = Stage("build", "build", "fails", [sys.executable, "-c", "raise SystemExit(3)"], [])
    monkeypatch.setattr(pl, "build_stages", lambda cfg: [bad])
    with pytest.raises(UserError, match="stage 'build' failed \\(exit code 3\\)"):
        pl.run_pipeline(PipelineConfig(output=str(out)))
    stamp = out / "stamps" / "build.json"
    assert not json.loads(stamp.read_text())["finished"]  # started, never finished: not reused


def _resumable_stage(out: Path, config: Path) -> Stage:
    """Counts its runs in workdir/state.txt, as a training command resumes from its folder."""
    work = out / "train"
    code = ("import pathlib,sys; w=pathlib.Path(sys.argv[1]); w.mkdir(parents=True, exist_ok=True); "
            "s=w/'state.txt'; n=int(s.read_text()) if s.exists() else 0; s.write_text(str(n+1)); "
            "(w/'done').write_text(open(sys.argv[2]).read())")
    return Stage("finetune", "finetune x", "T", [sys.executable, "-c", code, str(work), str(config)],
                 [work / "done"], workdir=work)


def test_stale_state_is_cleared_but_an_interrupted_run_resumes(tmp_path, monkeypatch):
    out, config = tmp_path / "run", tmp_path / "settings.yaml"
    config.write_text("x: 1\n")
    monkeypatch.setattr(pl, "build_stages", lambda cfg: [_resumable_stage(out, config)])
    state = out / "train" / "state.txt"
    pl.run_pipeline(PipelineConfig(output=str(out)))
    assert state.read_text() == "1"
    pl.run_pipeline(PipelineConfig(output=str(out), force=["finetune"]))
    assert state.read_text() == "1"  # forced: a fresh run, not a "resume" of the finished one
    config.write_text("x: 2\n")
    pl.run_pipeline(PipelineConfig(output=str(out)))
    assert state.read_text() == "1"  # changed inputs: fresh run too
    # An interrupted run (started with the same key, never finished) keeps its state and resumes.
    (stage,) = pl.plan(PipelineConfig(output=str(out)))
    pl.write_json(out / "stamps" / "finetune_x.json", {"stage": stage.name, "key": stage.key, "finished": None})
    (out / "train" / "done").unlink()
    pl.run_pipeline(PipelineConfig(output=str(out)))
    assert state.read_text() == "2"


def test_unknown_forced_stage_is_a_config_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        pl.main(["--output", str(tmp_path), "--force", "vocab"])
    assert exc.value.code == 2 and "unknown stage 'vocab'" in capsys.readouterr().err


def test_nested_overrides_flatten_and_zero_shot_uses_finetune_dtype(tmp_path, monkeypatch):
    monkeypatch.setattr(pl, "_config_args", lambda opts: [])
    cfg = PipelineConfig(output=str(tmp_path / "p"), dataset=str(tmp_path / "q.json"), methods=["none"],
                         finetune=pl.StageOptions("", {"model": {"dtype": "float32"}, "optim.epochs": 1}))
    stages = pl.build_stages(cfg)
    ft, ev = stages[3], stages[-1]
    assert ft.argv[-4:] == ["--model.dtype", "float32", "--optim.epochs", "1"]
    assert ev.argv[ev.argv.index("--zero_shot_dtype") + 1] == "float32"
