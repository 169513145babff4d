"""Patient timelines -> EhrMamba token sequences.

    [CLS] [VS] code code ... [VE] [W2] [VS] code ... [VE] ...

Visits: events between a visit-start marker and its end marker (admission .. discharge, ED
registration .. ED out, visit start .. visit end); events outside any such pair form one visit per
calendar day. Between two visits a time-interval token: [W0]..[W3] (weeks), [M1]..[M12] (months),
[LT] (longer), as in CEHR-BERT / EhrMamba. Per token: type, age (years), time (days since the
first event), visit segment (1/2 alternating, 0 outside visits) and visit order (1, 2, ...).
Codes become vocabulary tokens through the source's code map (``ehr.code_maps``). Long timelines
keep their most recent tokens (the prediction is about what comes next).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ehr.value_bins import ValueBins, bin_token

PAD, UNK, CLS, VS, VE = "[PAD]", "[UNK]", "[CLS]", "[VS]", "[VE]"
INTERVALS = [f"[W{i}]" for i in range(4)] + [f"[M{i}]" for i in range(1, 13)] + ["[LT]"]
SPECIALS = [PAD, UNK, CLS, VS, VE, *INTERVALS]
TYPE_NAMES = ("pad", "special", "visit", "interval", "task", "diagnosis", "lab", "medication", "procedure", "other")
TYPES = {n: i for i, n in enumerate(TYPE_NAMES)}
VISIT_START = re.compile(r"^(HOSPITAL_ADMISSION|ED_REGISTRATION|VISIT_START)")
VISIT_END = re.compile(r"^(HOSPITAL_DISCHARGE|ED_OUT|VISIT_END)")
MAX_AGE = 120


def task_token(name: str) -> str:
    return f"[TASK:{name}]"


def interval_token(days: float) -> str:
    if days < 28:
        return f"[W{min(int(days // 7), 3)}]"
    if days < 365:
        return f"[M{min(max(int(days // 30), 1), 12)}]"
    return "[LT]"


def code_type(meds_code: str) -> int:
    kind = meds_code.split("//", 1)[0]
    return TYPES.get({"DIAGNOSIS": "diagnosis", "LAB": "lab", "MEDICATION": "medication",
                      "PROCEDURE": "procedure"}.get(kind, "other"))


@dataclass
class Vocab:
    """Token strings -> ids; per code token its MedTok code (or None), description and training count."""

    tokens: list[str] = field(default_factory=lambda: list(SPECIALS))
    medtok: dict[str, str] = field(default_factory=dict)  # token -> SYSTEM:code
    descriptions: dict[str, str] = field(default_factory=dict)  # token -> text
    train_counts: dict[str, int] = field(default_factory=dict)  # token -> events in the training split
    value_bins: dict[str, str] = field(default_factory=dict)  # lab token <token>//Q<k> -> its code's token

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def add(self, token: str) -> int:
        if token not in self.index:
            self.index[token] = len(self.tokens)
            self.tokens.append(token)
        return self.index[token]

    def id(self, token: str) -> int:
        return self.index.get(token, self.index[UNK])

    def __len__(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        out = {"tokens": self.tokens, "medtok": self.medtok, "descriptions": self.descriptions,
               "train_counts": self.train_counts}
        if self.value_bins:  # only with --value_bins: vocab.json stays as it was without
            out["value_bins"] = self.value_bins
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(list(d["tokens"]), dict(d["medtok"]), dict(d["descriptions"]), dict(d["train_counts"]),
                   dict(d.get("value_bins", {})))


def build_vocab(code_table: dict, descriptions: dict[str, str], train_code_counts: pd.Series,
                all_codes, tasks: list[str], value_bins: ValueBins | None = None,
                train_bin_counts: dict[str, dict[int, int]] | None = None) -> Vocab:
    """Every token of the cohort (all splits: a MedTok variant embeds codes unseen in training), with
    the training split's counts (the learned table maps tokens never seen in training to [UNK]).

    With ``value_bins``, each binned code's lab tokens (``<token>//Q<k>``) follow its plain token
    (:func:`add_bin_tokens`); the plain token's count stays the code's count over all its events, so
    the rare-code slice judges codes, not code-and-bin pairs."""
    vocab = Vocab()
    for name in tasks:
        vocab.add(task_token(name))
    for code in sorted(all_codes):
        m = code_table[code]
        vocab.add(m.token)
        if m.medtok:
            vocab.medtok[m.token] = m.medtok
        if code in descriptions:
            vocab.descriptions.setdefault(m.token, descriptions[code])
    # events per MEDS code in the training split -> per token (several MEDS codes may share one token)
    counts = train_code_counts.groupby(train_code_counts.index.map(lambda c: code_table[c].token)).sum()
    vocab.train_counts = {str(k): int(v) for k, v in counts.items()}
    if value_bins is not None:
        add_bin_tokens(vocab, code_table, descriptions, value_bins, train_bin_counts or {})
    return vocab


def add_bin_tokens(vocab: Vocab, code_table: dict, descriptions: dict[str, str], value_bins: ValueBins,
                   train_bin_counts: dict[str, dict[int, int]]) -> None:
    """The lab tokens of every binned code. A lab token maps to its code's MedTok code (when that maps):
    MedTok knows codes, not values, so the MedTok variants give ``X//Q3`` the vector of ``X`` and the
    learned table carries the bin (``CodeEmbedding.bin_rows``); its description says the bin, so the
    text variant sees it too."""
    for code in sorted(value_bins.cuts):
        m = code_table.get(code)
        if m is None:  # fitted on another cohort (--value_bins_file) and absent from this one
            continue
        for k in value_bins.reachable(code):
            token = bin_token(m.token, k)
            vocab.add(token)
            vocab.value_bins[token] = m.token
            if m.medtok:
                vocab.medtok[token] = m.medtok
            if descriptions.get(code):
                vocab.descriptions.setdefault(token, f"{descriptions[code]}, result in quantile {k} of "
                                                     f"{value_bins.n}")
            n = train_bin_counts.get(code, {}).get(k, 0)
            if n:
                vocab.train_counts[token] = vocab.train_counts.get(token, 0) + n


def _visits(codes: list[str], times: list[pd.Timestamp]) -> list[list[int]]:
    """Split a subject's timed events (indices, in time order) into visits (see the module docstring)."""
    visits, current, open_visit, day = [], [], False, None
    for i, (code, when) in enumerate(zip(codes, times, strict=True)):
        if VISIT_START.search(code):
            if current:
                visits.append(current)
            current, open_visit = [i], True
            continue
        if open_visit:
            current.append(i)
            if VISIT_END.search(code):
                visits.append(current)
                current, open_visit, day = [], False, None
            continue
        if day is not None and when.date() != day and current:
            visits.append(current)
            current = []
        day = when.date()
        current.append(i)
    if current:
        visits.append(current)
    return visits


def encode_timeline(events: pd.DataFrame, code_table: dict, vocab: Vocab,
                    value_bins: ValueBins | None = None) -> dict[str, np.ndarray]:
    """Token ids and per-token features of one subject's whole timeline, with ``available``: the
    time each token becomes known (an event's time; [VS] at the visit's start, [VE] at its last
    event, an interval token at the next visit's start). :func:`cut` keeps what is known at a time.
    With ``value_bins`` a numeric event of a binned code is its lab token ``<token>//Q<k>``; the
    ``codes`` column keeps the code's own token (the rare-code slice is about codes)."""
    birth = events.loc[events["code"] == "MEDS_BIRTH", "time"]
    timed = events[events["time"].notna() & (events["code"] != "MEDS_BIRTH")]
    timed = timed.assign(_later=~timed["code"].str.match(VISIT_START.pattern)).sort_values(
        ["time", "_later"], kind="stable")  # a visit's start marker before the same-time events
    codes, times = timed["code"].tolist(), list(timed["time"])
    values = timed["numeric_value"].to_numpy(dtype=np.float64) if value_bins is not None else None
    start = times[0] if times else None
    born = birth.iloc[0] if len(birth) else None
    cols = {k: [] for k in ("input_ids", "token_type_ids", "ages", "times", "visit_segments", "visit_orders",
                            "available", "codes")}

    def put(token_id, kind, age, when, segment, order, code=""):
        for k, v in zip(cols, (token_id, kind, age, (when - start).total_seconds() / 86400, segment, order,
                               when.value // 1000, code), strict=True):
            cols[k].append(v)

    cols_first = (vocab.id(CLS), TYPES["special"], 0, 0.0, 0, 0, np.iinfo(np.int64).min, "")
    for k, v in zip(cols, cols_first, strict=True):
        cols[k].append(v)
    previous_end = None
    for n, visit in enumerate(_visits(codes, times), 1):
        t0, t1 = times[visit[0]], times[visit[-1]]
        age = min(max(int((t0 - born).days // 365.25), 0), MAX_AGE - 1) if born is not None else 0
        segment = 1 + (n - 1) % 2
        if previous_end is not None:
            put(vocab.id(interval_token((t0 - previous_end).total_seconds() / 86400)), TYPES["interval"], age, t0,
                0, n)
        put(vocab.id(VS), TYPES["visit"], age, t0, segment, n)
        for i in visit:
            token = code_table[codes[i]].token
            k = value_bins.bin_of(codes[i], values[i]) if value_bins is not None else None
            put(vocab.id(token if k is None else bin_token(token, k)), code_type(codes[i]), age, times[i], segment,
                n, token)
        put(vocab.id(VE), TYPES["visit"], age, t1, segment, n)
        previous_end = t1
    arrays = {k: np.asarray(v, dtype=np.float32 if k == "times" else object if k == "codes" else np.int64)
              for k, v in cols.items()}
    return arrays


def cut(seq: dict[str, np.ndarray], prediction_time, max_len: int, task: str | None = None,
        vocab: Vocab | None = None) -> dict[str, np.ndarray]:
    """The part of an encoded timeline known at ``prediction_time`` (all of it when None), its most
    recent ``max_len`` tokens after [CLS]; with ``task`` (multitask prompted finetuning) the task token
    replaces the first and the last token."""
    keep = np.ones(len(seq["input_ids"]), dtype=bool)
    if prediction_time is not None:
        keep = seq["available"] <= pd.Timestamp(prediction_time).value // 1000
    idx = np.flatnonzero(keep)
    if len(idx) > max_len:
        idx = np.concatenate([idx[:1], idx[len(idx) - max_len + 1:]])
    out = {k: v[idx].copy() for k, v in seq.items()}
    if task is not None:
        for k, v in (("input_ids", vocab.id(task_token(task))), ("token_type_ids", TYPES["task"])):
            out[k][0] = v
            out[k][-1] = v
    return out
