"""MEDS rows -> MedFuse's tokens: every numeric event becomes a (feature, value, time) triplet, every
categorical event (diagnosis, medication, procedure) a code token; nothing is imputed (a feature not
observed in a bin simply has no triplet).

Per sample (subject, prediction time, from ``ehr.tasks``):
  window         the events a model may read (``ehr.tasks.input_events``: at or before the prediction
                 time, within the look-back), e.g. the first 48 h of a stay for in-hospital mortality
  summarisation  optional bins of ``bin_hours`` counted back from the prediction time; per feature and
                 bin one triplet: the mean (or last) value at the bin's latest observation time
                 (MedFuse: 2 h bins over 48 h for mortality, 90-day bins over a year for onset)
  time           hours before the prediction time (>= 0); the model embeds it and adds it

Codes become vocabulary tokens through the source's code map (``ehr.code_maps``), so a lab's feature
identity and a diagnosis's code share one code-embedding plug-in with EhrMamba.

Normalisation: per feature token, mean and standard deviation of the training subjects' values only
(:func:`fit_normalisation`), saved and loaded as JSON; a feature never seen in training normalises to 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from commons.errors import DataFileError
from commons.io import write_json
from ehr.sequences import Vocab
from ehr.tasks import input_events

CATEGORICAL_KINDS = ("DIAGNOSIS", "MEDICATION", "PROCEDURE")
TRIPLET_KEYS = ("tokens", "values", "hours", "numeric")


@dataclass
class Windowing:
    """How one task's input becomes triplets."""

    window_hours: float | None = None  # look-back in hours (None: the task definition's lookback_days)
    bin_hours: float | None = None  # summarisation bin (None: every observation is its own triplet)
    summary: Literal["mean", "last"] = "mean"  # a bin's value
    max_tokens: int = 512  # the most recent tokens are kept


def event_rows(events: pd.DataFrame, code_table: dict, vocab: Vocab,
               categorical_kinds: tuple[str, ...] = CATEGORICAL_KINDS) -> pd.DataFrame:
    """The events that become tokens: every timed numeric event, and categorical events of
    ``categorical_kinds`` (MEDS' first code segment) without a value. Columns: token (vocab id),
    value (NaN for categorical), time, numeric."""
    timed = events[events["time"].notna()]
    numeric = timed["numeric_value"].notna().to_numpy()
    kind = timed["code"].str.split("//", n=1).str[0]
    keep = numeric | kind.isin(categorical_kinds).to_numpy()
    rows = timed[keep]
    return pd.DataFrame({
        "token": [vocab.id(code_table[c].token) for c in rows["code"]],
        "value": rows["numeric_value"].astype("float64").to_numpy(),
        "time": rows["time"].to_numpy(),
        "numeric": numeric[keep],
    })


def summarise(rows: pd.DataFrame, prediction_time, bin_hours: float, how: str = "mean") -> pd.DataFrame:
    """One row per (token, bin): bins of ``bin_hours`` counted back from the prediction time; the
    value is the bin's mean (or last) observation, the time its latest. Empty bins give nothing."""
    if rows.empty:
        return rows
    before = (pd.Timestamp(prediction_time) - pd.to_datetime(rows["time"])).dt.total_seconds() / 3600
    rows = rows.assign(_bin=np.floor(before.to_numpy() / bin_hours).astype(np.int64)).sort_values("time", kind="stable")
    grouped = rows.groupby(["token", "numeric", "_bin"], sort=False)
    out = grouped.agg(value=("value", how if how == "mean" else "last"), time=("time", "max")).reset_index()
    return out.drop(columns="_bin")


def sample_triplets(events: pd.DataFrame, prediction_time, lookback_days: float | None, windowing: Windowing,
                    code_table: dict, vocab: Vocab) -> dict[str, np.ndarray]:
    """The tokens of one sample, oldest first: tokens (vocab ids), values (raw, NaN for categorical),
    hours (before the prediction time) and numeric (bool)."""
    if windowing.window_hours is not None:
        lookback_days = windowing.window_hours / 24
    seen = input_events(events, prediction_time, lookback_days)
    rows = event_rows(seen, code_table, vocab)
    if windowing.bin_hours is not None:
        rows = summarise(rows, prediction_time, windowing.bin_hours, windowing.summary)
    rows = rows.sort_values(["time", "token"], kind="stable").tail(windowing.max_tokens)
    hours = (pd.Timestamp(prediction_time) - pd.to_datetime(rows["time"])).dt.total_seconds().to_numpy() / 3600
    return {"tokens": rows["token"].to_numpy(np.int64), "values": rows["value"].to_numpy(np.float32),
            "hours": hours.astype(np.float32), "numeric": rows["numeric"].to_numpy(bool)}


@dataclass
class NormStats:
    """Per feature token: mean, standard deviation and count of its training values."""

    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def normalise(self, tokens: np.ndarray, values: np.ndarray, vocab: Vocab) -> np.ndarray:
        """(value - mean) / std per token; 0 for features without training values and categorical rows."""
        names = [vocab.tokens[t] for t in tokens]
        mean = np.array([self.mean.get(n, np.nan) for n in names], dtype=np.float64)
        std = np.array([self.std.get(n, 1.0) for n in names], dtype=np.float64)
        out = (values.astype(np.float64) - mean) / std
        return np.nan_to_num(out, nan=0.0).astype(np.float32)

    def save(self, path: str | Path) -> None:
        write_json(path, {"format": "medfuse-normalisation/1", "mean": self.mean, "std": self.std,
                          "count": self.count})

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise DataFileError(f"{path}: not a readable normalisation file ({err})") from None
        if not isinstance(data, dict) or data.get("format") != "medfuse-normalisation/1":
            raise DataFileError(f"{path} is not a MedFuse normalisation file (format medfuse-normalisation/1)")
        return cls({k: float(v) for k, v in data["mean"].items()}, {k: float(v) for k, v in data["std"].items()},
                   {k: int(v) for k, v in data["count"].items()})


def fit_normalisation(rows: pd.DataFrame, vocab: Vocab) -> NormStats:
    """Statistics of the numeric ``rows`` (token, value) — the caller passes training subjects' only.
    A constant feature keeps std 1 (its values all normalise to 0)."""
    numeric = rows[rows["numeric"]]
    grouped = numeric.groupby("token")["value"]
    stats = NormStats()
    for token, mean, std, n in zip(grouped.mean().index, grouped.mean(), grouped.std(ddof=0), grouped.count(),
                                   strict=True):
        name = vocab.tokens[int(token)]
        stats.mean[name], stats.std[name], stats.count[name] = float(mean), float(std) if std > 1e-8 else 1.0, int(n)
    return stats
