"""metrics.jsonl of a fine-tune: the log itself and the window of steps its ``train`` records average."""

from __future__ import annotations

import json
import time
from pathlib import Path

from commons.io import write_text
from commons.tracking import scalars
from qa.memory import peak_rss_gib


class MetricsLog:
    """metrics.jsonl, appended by the main process; trimmed to the resumed step on resume."""

    def __init__(self, path: Path, active: bool, tracker=None):
        self.path, self.active, self.tracker = path, active, tracker  # tracker: an Accelerator with log_with

    def trim_after(self, step: int) -> None:
        if not self.active or not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        if self.active:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.tracker is not None and record.get("event") in ("train", "eval"):
                prefix = "train/" if record["event"] == "train" else "eval/"
                values = {prefix + k: v for k, v in scalars(record).items() if k != "best"}
                self.tracker.log(values, step=record["step"])


class TrainWindow:
    """Loss and tokens since the last ``train`` record of metrics.jsonl."""

    def __init__(self, step: int):
        self.logged_step = step
        self._reset()

    def _reset(self) -> None:
        self.t0, self.tokens, self.loss_sum, self.n = time.perf_counter(), 0, 0.0, 0

    def add(self, loss: float, tokens: int) -> None:
        self.loss_sum, self.tokens, self.n = self.loss_sum + loss, self.tokens + tokens, self.n + 1

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.n, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.t0, 1e-9)

    def unlogged(self, step: int) -> bool:
        """True when optimizer steps up to ``step`` have no record yet."""
        return self.n > 0 and step > self.logged_step

    def record(self, state, lr: float) -> dict:
        """The ``train`` record of this window (then a new window starts)."""
        rec = {"event": "train", "step": state.global_step, "epoch": state.epoch + 1, "loss": self.loss, "lr": lr,
               "tokens_per_s": self.tokens_per_s, "peak_rss_gib": peak_rss_gib()}
        self.logged_step = state.global_step
        self._reset()
        return rec
