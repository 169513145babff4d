"""EhrMamba training under accelerate with two CPU processes (DDP over gloo) gives the losses and weights
of one process on the whole batch: every process takes its share of the same step's batch and the
gradients are averaged."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from ehr_fixtures import write_mimic_like
from safetensors.torch import load_file

from ehr.data import DataOptions, prepare
from ehr.model import ModelOptions
from ehr.train import EhrTrainConfig, TrainOptions, train

# finetuning: a per-sample mean loss, so two equal shares' mean is the whole batch's mean; dropout off
ARGS = ["--model.backbone", "transformer", "--model.hidden", "16", "--model.layers", "1", "--model.dropout", "0",
        "--train.steps", "3", "--train.batch_size", "4", "--train.seed", "0", "--train.threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate's launcher is not installed")
def test_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    write_mimic_like(tmp_path / "meds")
    prepare(DataOptions(source="mimic_iv", max_len=64), tmp_path / "meds", tmp_path / "prep")
    one = train(EhrTrainConfig(data=str(tmp_path / "prep"), output_dir=str(tmp_path / "one"), stage="finetune",
                               model=ModelOptions(backbone="transformer", hidden=16, layers=1, dropout=0.0),
                               train=TrainOptions(steps=3, batch_size=4, seed=0, threads=1)))
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(_free_port()), "-m", "recipes.ehr", "finetune",
                           "--data", str(tmp_path / "prep"), "--output_dir", str(tmp_path / "two"), *ARGS],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    losses = [[json.loads(x)["loss"] for x in (out / "losses.jsonl").read_text().splitlines()] for out in (one, tmp_path / "two")]
    assert len(losses[1]) == 3  # one log, written by the main process
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    a, b = load_file(one / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
