"""Training curves: curves.png in every QA and MedTok run folder, and accelerate trackers behind
--report_to (none by default; TensorBoard offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from commons.config import ConfigError, parse_config
from commons.tracking import CURVES, LOG_DIR, medtok_curves, qa_curves, read_jsonl
from disease_linking.questions import write_jsonl
from qa.model import ModelOptions
from qa.tiny import TINY_CODES, build_tiny_lm, build_tiny_medtok, tiny_questions
from qa.training import DataOptions, OptimOptions, TrainConfig, train

PNG = b"\x89PNG\r\n\x1a\n"


def events(folder: Path) -> bytes:
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    return b"".join(f.read_bytes() for f in files)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("curves")
    write_jsonl(root / "linked.jsonl", tiny_questions(24))
    return {"root": root, "medtok": build_tiny_medtok(root / "medtok", TINY_CODES),
            "llama": build_tiny_lm(root / "llama"), "linked": root / "linked.jsonl"}


def qa_config(tiny, out: Path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(out), save_every_steps=100, early_stop_patience=0, log_every=1,
                       model=ModelOptions(base_model=str(tiny["llama"]), medtok=str(tiny["medtok"]), dtype="float32"),
                       data=DataOptions(train_file=str(tiny["linked"]), val_fraction=0.25, limit_train=8, limit_val=4),
                       optim=OptimOptions(epochs=2, batch_size=4), **kw)


def test_qa_run_writes_curves_and_no_tracker_files_by_default(tiny):
    out = tiny["root"] / "qa_default"
    train(qa_config(tiny, out))
    assert (out / CURVES).read_bytes().startswith(PNG)
    assert not (out / LOG_DIR).exists()  # no tracker unless asked
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["event"] for r in records].count("eval") == 2 and any("lr" in r for r in records)


def test_qa_report_to_tensorboard_logs_loss_lr_and_accuracy(tiny):
    pytest.importorskip("tensorboardX")
    out = tiny["root"] / "qa_tb"
    train(qa_config(tiny, out, report_to=["tensorboard"]))
    data = events(out / LOG_DIR)
    for tag in (b"train/loss", b"train/lr", b"eval/val_acc"):
        assert tag in data
    assert (out / CURVES).read_bytes().startswith(PNG)


def test_medtok_training_logs_lr_draws_curves_and_reports(tmp_path):
    pytest.importorskip("tensorboardX")
    from test_medtok import tiny_config, tiny_data

    from medtok_core.train import train as medtok_train

    cfg = tiny_config(tmp_path / "run", report_to=["tensorboard"])
    cfg.optim.epochs = 2
    history = medtok_train(cfg, tiny_data()).history
    assert all("lr" in r and "total" in r for r in history)
    assert b"train/total" in events(tmp_path / "run" / LOG_DIR)
    assert medtok_curves(history, tmp_path / "run" / CURVES).read_bytes().startswith(PNG)


def test_curves_from_an_empty_log_still_draw(tmp_path):
    assert qa_curves(tmp_path / "missing.jsonl", tmp_path / CURVES).read_bytes().startswith(PNG)


def test_report_to_is_checked_when_parsed():
    assert parse_config(TrainConfig, ["--report_to", "none"]).report_to == []
    with pytest.raises(ConfigError, match="report_to has unknown tracker 'tensorbord'; choose from none, tensorboard"):
        parse_config(TrainConfig, ["--report_to", "tensorbord"])


def test_report_to_does_not_make_a_run_folder_other(tmp_path):
    """Where a run reports is not what it is: resuming with another --report_to is allowed."""
    from commons.runident import save_run_config as save_config
    from commons.runident import starts_fresh

    cfg = TrainConfig(output_dir=str(tmp_path))
    save_config(cfg, tmp_path / "train_config.yaml")
    cfg.report_to = ["tensorboard"]
    assert starts_fresh(cfg, tmp_path / "train_config.yaml", tmp_path) is False
