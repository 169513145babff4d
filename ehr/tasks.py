"""Task labels from declared task definitions (ACES-style: trigger, prediction time, look-back window,
outcome window), one YAML file for all tasks (``ehr/tasks.yaml`` by default).

Every sample is (subject_id, prediction_time, label). Its model input is the subject's events at or
before the prediction time (and within the look-back window); the label only reads events strictly
after it, so no outcome leaks into an input (tests/test_ehr_tasks.py puts an outcome one second after
the prediction time and checks). Codes are matched by regular expressions on the MEDS code string,
so the same definitions run on MIMIC-IV's MEDS-Extract codes and on the synthetic cohort.

Kinds:
  event_within       label = an ``outcome`` event in (t, t + window_days]    (mortality, readmission)
  stay_longer_than   trigger = the stay's start, t = start + prediction_offset_hours; label = the stay
                     (ended by the first ``stay_end`` event) lasts more than ``threshold_days``;
                     stays that ended (or a death) at or before t are excluded   (length of stay)
  next_visit_has     t = the end of a visit (trigger); label = an ``outcome`` event during the
                     subject's next visit (``visit_start`` .. its ``visit_end``)   (next-visit condition)
  event_during_stay  trigger = the stay's start, t = start + prediction_offset_hours; label = an
                     ``outcome`` event in (t, the stay's end]; stays over at or before t are excluded
                     (in-hospital mortality after a 48 h observation window, MedFuse)

es-aces (the ACES reference implementation) installs within the project's pins (`pip install
--dry-run`: it adds polars and hydra), but its configs need its own predicate language and polars
frames; these definitions keep to its vocabulary (trigger, windows, outcome) on pandas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from commons.config import from_dict, load_yaml, require_range
from commons.errors import ConfigError

DEFAULT_TASKS = Path(__file__).with_name("tasks.yaml")


@dataclass
class TaskDefinition:
    """One binary prediction task."""

    name: str = ""
    kind: Literal["event_within", "stay_longer_than", "next_visit_has", "event_during_stay"] = "event_within"
    trigger: str = ""  # regex on the MEDS code of the events that open a sample
    prediction_offset_hours: float = 0.0  # prediction time = trigger time + this
    lookback_days: float | None = None  # input window before the prediction time; none = whole history
    outcome: str = ""  # regex of the outcome events (event_within, next_visit_has)
    window_days: float = 30.0  # outcome window (t, t + window] for event_within
    stay_end: str = "^HOSPITAL_DISCHARGE"  # regex ending a stay (stay_longer_than)
    threshold_days: float = 7.0  # stay_longer_than: label = stay > this
    exclude: str = "^MEDS_DEATH$"  # samples with such an event at or before t are left out
    visit_start: str = "^(HOSPITAL_ADMISSION|ED_REGISTRATION|VISIT_START)"  # next_visit_has
    visit_end: str = "^(HOSPITAL_DISCHARGE|ED_OUT|VISIT_END)"  # next_visit_has

    def __post_init__(self):
        require_range(self, "window_days", 0, low_open=True)
        require_range(self, "threshold_days", 0, low_open=True)
        require_range(self, "lookback_days", 0, low_open=True)
        require_range(self, "prediction_offset_hours", 0)
        for name in ("trigger", "outcome", "stay_end", "exclude", "visit_start", "visit_end"):
            try:
                re.compile(getattr(self, name))
            except re.error as err:
                raise ConfigError(f"task {self.name}: {name} {getattr(self, name)!r} is not a regex ({err})") from None
        if not self.trigger:
            raise ConfigError(f"task {self.name or '?'} needs a trigger regex")
        if self.kind in ("event_within", "next_visit_has", "event_during_stay") and not self.outcome:
            raise ConfigError(f"task {self.name} of kind {self.kind} needs an outcome regex")


@dataclass
class TaskFile:
    tasks: list[dict] = field(default_factory=list)


def load_tasks(path: str | Path | None = None, names: list[str] | None = None) -> list[TaskDefinition]:
    """The task definitions of a YAML file (``tasks:`` list of mappings), optionally only ``names``."""
    data = load_yaml(path or DEFAULT_TASKS)
    raw = data.get("tasks")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"task file {path or DEFAULT_TASKS} needs a non-empty `tasks:` list")
    tasks = [from_dict(TaskDefinition, t, f"tasks[{i}].") for i, t in enumerate(raw)]
    seen = [t.name for t in tasks]
    if len(set(seen)) != len(seen) or "" in seen:
        raise ConfigError(f"task names must be unique and non-empty, got {seen}")
    if names:
        unknown = sorted(set(names) - set(seen))
        if unknown:
            raise ConfigError(f"unknown task(s) {', '.join(unknown)}; {path or DEFAULT_TASKS} has {', '.join(seen)}")
        tasks = [t for t in tasks if t.name in names]
    return tasks


def code_mask(codes: pd.Series, pattern: str) -> np.ndarray:
    """Which codes match ``pattern``, matched once per distinct code (a shard repeats codes a lot)."""
    rx = re.compile(pattern)
    distinct = pd.unique(codes)
    hits = {c: bool(rx.search(c)) for c in distinct}
    return codes.map(hits).to_numpy(dtype=bool)


def _times(events: pd.DataFrame, pattern: str) -> np.ndarray:
    """Sorted times of the events whose code matches ``pattern`` (timeless events never match).
    A column named by the pattern (precomputed by :func:`build_labels`) is used when present."""
    hit = events[pattern].to_numpy() if pattern in events.columns else code_mask(events["code"], pattern)
    hit = hit & events["time"].notna().to_numpy()
    return np.sort(events.loc[hit, "time"].to_numpy(dtype="datetime64[us]"))


def _first_after(times: np.ndarray, t) -> np.datetime64 | None:
    i = np.searchsorted(times, t, side="right")
    return times[i] if i < len(times) else None


def subject_samples(task: TaskDefinition, subject_id: int, events: pd.DataFrame) -> list[dict]:
    """The samples of one subject for ``task``: prediction time and label, from its events only."""
    out = []
    excluded = _times(events, task.exclude) if task.exclude else np.array([], dtype="datetime64[us]")
    outcome = _times(events, task.outcome) if task.outcome else excluded[:0]
    stay_ends = _times(events, task.stay_end)
    visit_starts, visit_ends = _times(events, task.visit_start), _times(events, task.visit_end)
    offset = np.timedelta64(int(task.prediction_offset_hours * 3600 * 1e6), "us")
    for trigger in _times(events, task.trigger):
        t = trigger + offset
        if len(excluded) and excluded[0] <= t:
            continue  # e.g. died before the prediction time: nothing left to predict
        if task.kind == "event_within":
            first = _first_after(outcome, t)
            window = np.timedelta64(int(task.window_days * 86400 * 1e6), "us")
            label = first is not None and first <= t + window
        elif task.kind == "stay_longer_than":
            end = _first_after(stay_ends, trigger)
            if end is None or end <= t:
                continue  # stay still open at the snapshot, or over before the prediction time
            label = (end - trigger) > np.timedelta64(int(task.threshold_days * 86400 * 1e6), "us")
        elif task.kind == "event_during_stay":
            end = _first_after(stay_ends, trigger)
            first = _first_after(outcome, t)
            if end is None and first is None or end is not None and end <= t:
                continue  # stay still open with nothing known, or over before the prediction time
            label = first is not None and (end is None or first <= end)
        else:  # next_visit_has
            start = _first_after(visit_starts, t)
            end = _first_after(visit_ends, start) if start is not None else None
            if end is None:
                continue  # no complete next visit: no label
            label = bool(((outcome >= start) & (outcome <= end)).any())
        out.append({"task": task.name, "subject_id": subject_id, "prediction_time": pd.Timestamp(t),
                    "label": int(bool(label))})
    return out


def build_labels(dataset, tasks: list[TaskDefinition]) -> pd.DataFrame:
    """Samples of every task over a :class:`~ehr.meds.MedsDataset`, one shard in memory at a time."""
    patterns = sorted({p for t in tasks for p in (t.trigger, t.outcome, t.stay_end, t.exclude, t.visit_start,
                                                   t.visit_end) if p})
    rows = []
    for shard in dataset.iter_shards():
        shard = pd.concat([shard, pd.DataFrame({p: code_mask(shard["code"], p) for p in patterns})], axis=1)
        for sid, events in shard.groupby("subject_id", sort=True):
            for task in tasks:
                rows += subject_samples(task, int(sid), events)
    return pd.DataFrame(rows, columns=["task", "subject_id", "prediction_time", "label"])


def input_events(events: pd.DataFrame, prediction_time, lookback_days: float | None) -> pd.DataFrame:
    """The events a model may read for a sample: time <= prediction time (timeless ones included),
    and within the look-back window."""
    t = pd.Timestamp(prediction_time)
    keep = events["time"].isna() | (events["time"] <= t)
    if lookback_days is not None:
        keep &= events["time"].isna() | (events["time"] >= t - pd.Timedelta(days=lookback_days))
    return events[keep]
