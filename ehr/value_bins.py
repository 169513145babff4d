"""Lab results as tokens: a numeric MEDS event (a row with ``numeric_value``) becomes one token,
its code's token with the value's quantile bin, ``<token>//Q<k>`` (k = 1..n), as EhrMamba and
Odyssey (its codebase) represent lab results.

Cut points are fitted per MEDS code (so a LOINC code reported in two units gets two fits) on the
TRAINING split's values only, and written to the prepared folder (``value_bins.json``) so that every
split, and a new cohort prepared with ``--value_bins_file``, goes through the same bins. A code with
fewer than ``2 * n`` training values gets no bins: its numeric events keep the plain code token, as do
numeric events of codes never seen with a value in training.

Bins are right-closed like ``pandas.qcut``: Q1 is ``value <= cut[0]``, Qn is ``value > cut[-1]``.
Duplicate cut points (many equal values) are kept, so ``Q<k>`` always means the k-th n-tile of the
training values; a bin that no value can reach (between two equal cut points) gets no token.
Fitting holds the training values of every numeric code in memory (float32); on MIMIC-IV's scale a
streaming quantile sketch would replace :func:`training_values`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from commons.errors import DataFileError

BIN_MARK = "//Q"


def bin_token(token: str, k: int) -> str:
    return f"{token}{BIN_MARK}{k}"


def numeric_mask(events: pd.DataFrame) -> np.ndarray:
    """Events that carry a usable value (finite ``numeric_value``)."""
    return np.isfinite(pd.to_numeric(events["numeric_value"], errors="coerce").to_numpy(dtype=np.float64))


@dataclass
class ValueBins:
    """Per MEDS code its ascending cut points (``n - 1`` of them) and the training values they came from."""

    n: int
    cuts: dict[str, np.ndarray] = field(default_factory=dict)  # code -> float64 cut points
    train_values: dict[str, int] = field(default_factory=dict)  # code -> training values fitted on
    plain: dict[str, int] = field(default_factory=dict)  # numeric codes with too few training values -> count

    def bin_of(self, code: str, value: float) -> int | None:
        """The value's bin (1..n), or None when the code has no bins or the value is missing."""
        cuts = self.cuts.get(code)
        if cuts is None or not np.isfinite(value):
            return None
        return int(np.searchsorted(cuts, value, side="left")) + 1

    def reachable(self, code: str) -> list[int]:
        """The bins a value can land in (an interval between two equal cut points is empty)."""
        edges = [-np.inf, *self.cuts[code], np.inf]
        return [k for k in range(1, self.n + 1) if edges[k - 1] < edges[k]]

    def to_dict(self) -> dict:
        return {"value_bins": self.n,
                "codes": {c: {"cuts": [float(x) for x in self.cuts[c]], "train_values": self.train_values[c]} for c in sorted(self.cuts)},
                "plain": {c: self.plain[c] for c in sorted(self.plain)}}

    @classmethod
    def from_dict(cls, d: dict, source: str = "value_bins.json") -> ValueBins:
        try:
            n = int(d["value_bins"])
            cuts = {str(c): np.asarray(v["cuts"], dtype=np.float64) for c, v in d["codes"].items()}
            counts = {str(c): int(v["train_values"]) for c, v in d["codes"].items()}
            plain = {str(c): int(v) for c, v in d.get("plain", {}).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise DataFileError(f"{source} is not a value-bins file ({err!r} missing or malformed); use the "
                                "value_bins.json that `medtok-qa ehr data --value_bins N` writes") from None
        bad = [c for c, v in cuts.items() if len(v) != n - 1 or not np.all(np.diff(v) >= 0)]
        if n < 2 or bad:
            raise DataFileError(f"{source}: value_bins must be >= 2 with n-1 ascending cut points per code"
                                + (f" (not so for {bad[:3]})" if bad else ""))
        return cls(n, cuts, counts, plain)


def training_values(shards, train_ids: set[int]) -> dict[str, np.ndarray]:
    """Every finite ``numeric_value`` of the training subjects, per MEDS code (one shard at a time)."""
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    for df in shards:
        df = df[df["subject_id"].isin(train_ids)]
        df = df[numeric_mask(df)]
        for code, values in df.groupby("code", sort=False)["numeric_value"]:
            parts[str(code)].append(values.to_numpy(dtype=np.float32))
    return {c: np.concatenate(v) for c, v in parts.items()}


def fit_value_bins(values: dict[str, np.ndarray], n: int) -> ValueBins:
    """Quantile cut points per code from its training values; codes with fewer than ``2 * n`` stay plain."""
    bins = ValueBins(n)
    for code in sorted(values):
        v = values[code].astype(np.float64)
        if len(v) < 2 * n:
            bins.plain[code] = len(v)
            continue
        bins.cuts[code] = np.quantile(v, np.arange(1, n) / n)
        bins.train_values[code] = len(v)
    return bins


def bin_counts(bins: ValueBins, values: dict[str, np.ndarray]) -> dict[str, dict[int, int]]:
    """Training events per (code, bin): the bin tokens' training counts in the vocabulary."""
    out = {}
    for code, cuts in bins.cuts.items():
        v = values.get(code, np.zeros(0, dtype=np.float32)).astype(np.float64)
        ks, n = np.unique(np.searchsorted(cuts, v, side="left") + 1, return_counts=True)
        out[code] = {int(k): int(c) for k, c in zip(ks, n, strict=True)}
    return out
