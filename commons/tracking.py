"""Training curves for both trainers (MedTok, QA): ``curves.png`` in the run folder, and accelerate's
experiment trackers (``--report_to tensorboard``) for those who watch runs in TensorBoard & co.

The JSONL logs (MedTok ``history.jsonl``, QA ``metrics.jsonl``) stay the record; the PNG is drawn
from them at the end of training, so it always matches what the run logged. Trackers are opt-in
(none by default) and go through ``Accelerator(log_with=...)``; TensorBoard writes event files
under ``<output_dir>/logs`` and needs no network.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterable
from pathlib import Path

from commons.config import FieldError
from commons.io import atomic_path

# accelerate tracker name -> the module it needs (any one of them) and the pip extra that brings it
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboardX", "tensorboard"), "pip install 'medtok-qa[tensorboard]'"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
}
LOG_DIR = "logs"
CURVES = "curves.png"


def check_report_to(cfg, name: str = "report_to") -> None:
    """For a config's ``__post_init__``: known tracker names whose package is installed ("none" = no tracker)."""
    values = [v for v in getattr(cfg, name) if v != "none"]
    for value in values:
        if value not in TRACKERS:
            raise FieldError(name, f"has unknown tracker {value!r}; choose from none, {', '.join(TRACKERS)}")
        modules, install = TRACKERS[value]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise FieldError(name, f"{value} needs the {modules[0]} package: {install}")
    setattr(cfg, name, values)


def accelerator_kwargs(report_to: list[str], output_dir: str | Path) -> dict:
    """Extra ``Accelerator(...)`` arguments for the trackers (none: no arguments, nothing written)."""
    if not report_to:
        return {}
    from accelerate.utils import ProjectConfiguration

    out = Path(output_dir)
    return {"log_with": list(report_to),
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / LOG_DIR))}


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """A nested config as the flat scalars trackers accept (lists and None as text)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def start_trackers(accelerator, report_to: list[str], run_name: str, config: dict) -> None:
    if report_to:
        accelerator.init_trackers(run_name, config=flat_hparams(config))


def scalars(record: dict, skip: Iterable[str] = ("step", "epoch")) -> dict[str, float]:
    """The finite numbers of a log record (what a tracker can plot)."""
    return {k: float(v) for k, v in record.items() if k not in skip and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


# ------------------------------------------------------------------------------------------ plots
def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def plot_curves(path: Path, title: str, loss: dict[str, list[tuple[int, float]]],
                lr: list[tuple[int, float]], accuracy: dict[str, list[tuple[int, float]]],
                missing: str = "not measured in this run") -> Path:
    """Loss, learning rate and validation accuracy over optimizer steps, one panel each (a panel
    without data says so rather than vanishing, so every curves.png has the same layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("loss", loss), ("learning rate", {"lr": lr}), ("validation accuracy", accuracy)]
    for ax, (name, series) in zip(axes, panels, strict=True):
        drawn = False
        for label, points in series.items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(points) < 20 else None, label=label)
                drawn = True
        if drawn and len(series) > 1:
            ax.legend(fontsize=8)
        if not drawn:
            ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def qa_curves(metrics_file: Path, path: Path) -> Path:
    """curves.png of a QA run from its metrics.jsonl (train loss + lr, validation accuracy per epoch)."""
    records = read_jsonl(metrics_file)
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval" and r.get("val_acc") is not None]
    return plot_curves(path, f"QA fine-tuning: {metrics_file.parent.name}",
                       {"train loss": [(r["step"], r["loss"]) for r in train if "loss" in r]},
                       [(r["step"], r["lr"]) for r in train if "lr" in r],
                       {"val_acc": [(r["step"], r["val_acc"]) for r in evals]})


def medtok_curves(history: list[dict], path: Path) -> Path:
    """curves.png of a MedTok run from its history (total and component losses, lr; MedTok has no
    validation accuracy: its quality is measured on the exported artifact)."""
    names = [k for k in (history[0] if history else {}) if k not in ("step", "lr", "restarted")]
    loss = {n: [(r["step"], r[n]) for r in history if n in r] for n in names}
    return plot_curves(path, f"MedTok training: {path.parent.name}", loss,
                       [(r["step"], r["lr"]) for r in history if "lr" in r], {},
                       missing="MedTok has no validation accuracy:\nits quality is measured on the artifact")
