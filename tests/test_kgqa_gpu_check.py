"""benchmarks/gpu_check.py --tiny: the GPU check's own code path (LoRA + prefix methods through the
QA model under accelerate, bf16, scoring, MFU against a measured matmul peak) on a tiny CPU LLaMA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_tiny_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--methods", "none", "medtok",
                           "--steps", "1", "--batch_size", "2", "--score_n", "4", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] and result["dtype"] == "bfloat16" and result["matmul_peak_bf16_tflops"] > 0
    assert set(result["methods"]) == {"none", "medtok"}
    for row in result["methods"].values():
        assert row["all_scored"] and row["train_tokens_per_s"] > 0 and 0 < row["train_mfu"] < 1
        assert len(row["losses"]) == 2


def test_gpu_check_bad_method_is_one_error_line():
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--methods", "nonsense"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown prefix method 'nonsense'" in done.stderr and "Traceback" not in done.stderr
