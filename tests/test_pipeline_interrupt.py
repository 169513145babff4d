"""SIGTERM to ``python -m recipes.pipeline`` mid-fine-tune: nothing keeps running, and the rerun
finishes with the same metrics as a run that was never interrupted (tiny LLaMA, tiny artifact)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from disease_linking.questions import write_jsonl
from qa.tiny import TINY_CODES, build_tiny_lm, build_tiny_medtok, tiny_questions

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    write_jsonl(root / "linked.jsonl", tiny_questions(48))
    return {"llama": str(build_tiny_lm(root / "llama")), "medtok": str(build_tiny_medtok(root / "medtok", TINY_CODES)),
            "linked": str(root / "linked.jsonl"), "root": root}


def pipeline_config(inputs, out: Path, seeds=(0,), workers=1) -> Path:
    cfg = {"output": str(out), "medtok_artifact": inputs["medtok"], "linked": inputs["linked"],
           "methods": ["none"], "seeds": list(seeds), "zero_shot": False, "workers": workers,
           "launcher_args": ["--config_file", "configs/accelerate/cpu.yaml"],
           "finetune": {"config": "", "overrides": {
               "model": {"base_model": inputs["llama"], "dtype": "float32"},
               "optim": {"epochs": 2, "batch_size": 4, "lr": 0.01, "warmup_ratio": 0.0},
               "data": {"val_fraction": 0.25}, "save_every_steps": 2, "log_every": 1,
               "early_stop_patience": 0}},
           "eval": {"config": "", "overrides": {"bootstrap.n_resamples": 50}}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def command(config: Path) -> list[str]:
    return [sys.executable, "-m", "recipes.pipeline", "--config", str(config)]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def metrics(out: Path, seed: int = 0) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train step, loss) and (eval step, val_acc), what the run learned: no timings."""
    records = [json.loads(x) for x in (out / "qa" / f"none-seed{seed}" / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], round(r["loss"], 5)) for r in records if r["event"] == "train"]
    evals = [(r["step"], r["val_acc"]) for r in records if r["event"] == "eval"]
    return train, evals


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(proc.name) != os.getpid():
                pids.append(int(proc.name))
    return pids


def wait_for_train_step(out: Path, step: int, proc: subprocess.Popen, timeout_s: float = 300, seed: int = 0) -> None:
    log = out / "qa" / f"none-seed{seed}" / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the pipeline ended before it could be interrupted"
        if log.is_file() and any(json.loads(x).get("step", 0) >= step for x in log.read_text().splitlines() if x):
            return
        time.sleep(0.2)
    raise AssertionError(f"no training step {step} within {timeout_s} s")


def test_sigterm_stops_every_process_and_the_rerun_matches_an_uninterrupted_run(inputs):
    root = inputs["root"]
    whole = root / "whole"
    subprocess.run(command(pipeline_config(inputs, whole)), cwd=REPO, env=env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    cut = root / "cut"
    config = pipeline_config(inputs, cut)
    proc = subprocess.Popen(command(config), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_train_step(cut, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM during stage 'finetune none seed 0'" in err.strip().splitlines()[-1]
    assert processes_mentioning(str(cut)) == []  # no fine-tune left training in the background
    assert not (cut / "eval" / "results.json").exists()
    stamp = json.loads((cut / "stamps" / "finetune_none_seed_0.json").read_text())
    assert not stamp["finished"]

    subprocess.run(command(config), cwd=REPO, env=env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed_log = (cut / "qa" / "none-seed0" / "metrics.jsonl").read_text()
    assert '"event": "resume"' in resumed_log  # it continued, it did not start over
    assert metrics(cut) == metrics(whole)
    accuracy = [json.loads((d / "eval" / "results.json").read_text())["methods"]["none"] for d in (whole, cut)]
    assert accuracy[0] == accuracy[1]


def test_parallel_fine_tunes_stop_together_and_resume_to_the_sequential_result(inputs):
    """workers: 2 runs two fine-tunes at once (each on its share of the cores, output in its log);
    SIGTERM stops both, and the rerun, which may use another number of workers, learns exactly
    what the sequential pipeline learns."""
    root = inputs["root"]
    sequential = root / "sequential"
    subprocess.run(command(pipeline_config(inputs, sequential, seeds=(0, 1))), cwd=REPO, env=env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    cut = root / "parallel"
    proc = subprocess.Popen(command(pipeline_config(inputs, cut, seeds=(0, 1), workers=2)), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_train_step(cut, 3, proc, seed=1)  # seed 1 trains while seed 0 does: they run together
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM during stages 'finetune none seed 0', 'finetune none seed 1'" in err
    assert "started finetune none seed 1 on 1 thread(s)" in out or (os.cpu_count() or 1) > 3
    assert processes_mentioning(str(cut)) == []
    assert (cut / "logs" / "finetune_none_seed_1.log").is_file()

    subprocess.run(command(pipeline_config(inputs, cut, seeds=(0, 1), workers=2)), cwd=REPO, env=env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for seed in (0, 1):
        assert metrics(cut, seed) == metrics(sequential, seed)
    accuracy = [json.loads((d / "eval" / "results.json").read_text())["methods"]["none"] for d in (sequential, cut)]
    assert accuracy[0] == accuracy[1]
