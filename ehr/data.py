"""``medtok-qa ehr data``: a MEDS folder (or clinosim's cohort) -> the prepared EHR dataset folder.

    prepared/
      config.yaml            the resolved options
      mapping_report.json    codes and events mapped to MedTok, the unmapped ones by reason
      vocab.json             tokens, their MedTok codes, descriptions and training counts
      samples.parquet        one row per sequence: kind (pretrain | task), task, subject_id,
                             prediction_time, label, split, and the encoded sequence's columns
      positives.json         samples and positives per task and split; estimable or not
      value_bins.json        (--value_bins N only) per lab code its quantile cut points, fitted on the
                             training split, and how many numeric events were binned / stayed plain

Everything reads the MEDS folder one shard at a time. Pretraining sequences: each training
subject's whole timeline. Task sequences: the subject's events up to each sample's prediction time
(``ehr.tasks.input_events``), task token first and last (MPF).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from commons.config import require_range
from commons.errors import ConfigError, DataFileError
from commons.io import atomic_dir, read_json, write_json
from ehr.code_maps import get_code_map, map_codes
from ehr.meds import SPLITS, MedsDataset
from ehr.sequences import build_vocab, cut, encode_timeline
from ehr.splits import subject_splits
from ehr.tasks import build_labels, input_events, load_tasks
from ehr.value_bins import ValueBins, bin_counts, fit_value_bins, numeric_mask, training_values

SEQUENCE_COLUMNS = ("input_ids", "token_type_ids", "ages", "times", "visit_segments", "visit_orders", "available",
                    "codes")


@dataclass
class DataOptions:
    """Prepare an EHR dataset folder from MEDS (or clinosim's synthetic cohort)."""

    output_dir: str = "runs/ehr/data"  # the prepared folder (samples.parquet, vocab.json, reports)
    meds_dir: str = ""  # a MEDS folder (data/*.parquet, metadata/); empty: fhir_dir or clinosim's cohort (below)
    fhir_dir: str = ""  # a clinosim fhir_r4 folder, converted into <output_dir>_meds
    source: str = "clinosim"  # code map plug-in for the MEDS code strings (ehr/code_maps/)
    tasks_file: str | None = None  # task definitions YAML (none: ehr/tasks.yaml)
    tasks: list[str] = field(default_factory=list)  # task names to build (empty: all in the file)
    max_len: int = 512  # tokens per sequence (the most recent are kept)
    seed: int = 0  # the hash split's seed when the MEDS folder has no subject_splits.parquet
    min_test_positives: int = 10  # a task with fewer positives in held_out is reported not estimable
    # lab results: a numeric event becomes <code token>//Q<k>, its value's quantile bin (k = 1..value_bins)
    # among the training split's values of that code (ehr/value_bins.py); 0: the code token alone
    value_bins: int = 0
    value_bins_file: str = ""  # use this value_bins.json (another prepared folder's) instead of fitting
    data_dir: str | None = None  # the project's data folder (RxNorm -> ATC tables)
    # clinosim's cohort, generated once and cached by these parameters when meds_dir is empty
    clinosim_population: int = 300
    clinosim_seed: int = 1
    clinosim_start: str | None = None
    clinosim_end: str = "2026-12-01"

    def __post_init__(self):
        require_range(self, "max_len", 8)
        require_range(self, "min_test_positives", 1)
        require_range(self, "clinosim_population", 1)
        if self.value_bins == 1 or self.value_bins < 0:
            raise ConfigError(f"value_bins must be 0 (off) or at least 2, got {self.value_bins}")
        if self.value_bins_file and not self.value_bins:
            raise ConfigError("value_bins_file needs value_bins set to the file's number of bins")


def code_counts(dataset: MedsDataset, splits: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Events per code in the whole cohort and in the training split."""
    train_ids = set(splits.loc[splits["split"] == SPLITS[0], "subject_id"])
    total, train = pd.Series(dtype="int64"), pd.Series(dtype="int64")
    for df in dataset.iter_shards():
        total = total.add(df["code"].value_counts(), fill_value=0)
        train = train.add(df.loc[df["subject_id"].isin(train_ids), "code"].value_counts(), fill_value=0)
    return total.astype("int64"), train.astype("int64")


def positives_table(samples: pd.DataFrame, min_test_positives: int) -> dict:
    """Samples and positives per task and split; a task is estimable when held_out has enough positives."""
    out = {}
    tasks = samples[samples["kind"] == "task"]
    for task, df in tasks.groupby("task"):
        by_split = {s: {"samples": int((df["split"] == s).sum()), "positives": int(df.loc[df["split"] == s, "label"].sum())}
                    for s in SPLITS}
        held = by_split[SPLITS[2]]
        estimable = min_test_positives <= held["positives"] <= held["samples"] - min_test_positives
        out[task] = {**by_split, "estimable": bool(estimable),
                     "why_not": "" if estimable else (f"fewer than {min_test_positives} positives or negatives in "
                                                       f"{SPLITS[2]}: no AUROC/AUPRC is reported")}
    return out


def lab_value_bins(opts: DataOptions, dataset: MedsDataset, splits: pd.DataFrame
                   ) -> tuple[ValueBins, dict[str, dict[int, int]]]:
    """The cut points (fitted on the training split's values, or read from ``value_bins_file``) and the
    training events per (code, bin)."""
    values = training_values(dataset.iter_shards(), set(splits.loc[splits["split"] == SPLITS[0], "subject_id"]))
    if not opts.value_bins_file:
        bins = fit_value_bins(values, opts.value_bins)
    else:
        path = Path(opts.value_bins_file)
        path = path / "value_bins.json" if path.is_dir() else path
        if not path.is_file():
            raise DataFileError(f"--value_bins_file {path} does not exist; pass a prepared folder's value_bins.json")
        try:
            bins = ValueBins.from_dict(read_json(path), str(path))
        except ValueError as err:  # not JSON
            raise DataFileError(f"--value_bins_file {path} is not JSON ({err}); pass a value_bins.json") from None
        if bins.n != opts.value_bins:
            raise ConfigError(f"--value_bins {opts.value_bins} but {path} holds {bins.n} bins; pass --value_bins {bins.n}")
    return bins, bin_counts(bins, values)


def bins_report(bins: ValueBins, numeric_events: int, binned_events: int, numeric_codes: set[str]) -> dict:
    """What the data stage tells about lab tokens (printed and written to value_bins.json)."""
    return {"numeric_events": numeric_events, "binned_events": binned_events,
            "plain_numeric_events": numeric_events - binned_events,
            "codes_with_bins": len(bins.cuts),
            "codes_plain_too_few_training_values": len(bins.plain),
            "codes_plain_no_training_values": len(numeric_codes - set(bins.cuts) - set(bins.plain)),
            "min_training_values": 2 * bins.n}


def prepare(opts: DataOptions, meds_dir: Path, out: Path) -> dict:
    """Write the prepared dataset folder ``out`` from the MEDS folder ``meds_dir``; returns the summary."""
    dataset = MedsDataset(meds_dir)
    tasks = load_tasks(opts.tasks_file, opts.tasks)
    code_map = get_code_map(opts.source, opts.data_dir)
    splits = subject_splits(dataset, opts.seed)
    split_of = dict(zip(splits["subject_id"], splits["split"], strict=True))
    total, train = code_counts(dataset, splits)
    table, report = map_codes(code_map, total)
    meta = dataset.codes_metadata()
    descriptions = dict(zip(meta["code"], meta["description"].fillna(""), strict=True)) if len(meta) else {}
    bins, train_bins = lab_value_bins(opts, dataset, splits) if opts.value_bins else (None, None)
    vocab = build_vocab(table, descriptions, train, total.index, [t.name for t in tasks], bins, train_bins)
    labels = build_labels(dataset, tasks)
    lookback = {t.name: t.lookback_days for t in tasks}
    rows, numeric_events, binned_events, numeric_codes = [], 0, 0, set()
    for sid, events in dataset.iter_subjects():
        split = split_of.get(sid)
        if split is None:
            continue
        if bins is not None:
            numeric = events.loc[numeric_mask(events), "code"]
            numeric_codes.update(numeric.unique())
            numeric_events += len(numeric)
            binned_events += int(numeric.isin(bins.cuts.keys()).sum())
        full = encode_timeline(events, table, vocab, bins)
        if split == SPLITS[0]:
            seq = cut(full, None, opts.max_len)
            rows.append({"kind": "pretrain", "task": "", "subject_id": sid, "prediction_time": pd.NaT,
                         "label": -1, "split": split, **seq})
        for s in labels[labels["subject_id"] == sid].itertuples(index=False):
            if lookback[s.task] is None:
                seq = cut(full, s.prediction_time, opts.max_len, s.task, vocab)
            else:  # a look-back window: encode the window's events alone (visit numbering restarts)
                seen = encode_timeline(input_events(events, s.prediction_time, lookback[s.task]), table, vocab, bins)
                seq = cut(seen, s.prediction_time, opts.max_len, s.task, vocab)
            rows.append({"kind": "task", "task": s.task, "subject_id": sid, "prediction_time": s.prediction_time,
                         "label": int(s.label), "split": split, **seq})
    if not rows:
        raise ConfigError(f"{meds_dir}: no subject has a split or any events; check the MEDS folder")
    samples = pd.DataFrame(rows)
    samples["codes"] = samples["codes"].map(list)
    positives = positives_table(samples, opts.min_test_positives)
    with atomic_dir(out) as tmp:
        samples.to_parquet(tmp / "samples.parquet", index=False)
        write_json(tmp / "vocab.json", vocab.to_dict())
        write_json(tmp / "mapping_report.json", {"source": opts.source, **report.as_dict()})
        write_json(tmp / "positives.json", positives)
        if bins is not None:
            lab = bins_report(bins, numeric_events, binned_events, numeric_codes)
            write_json(tmp / "value_bins.json", {**bins.to_dict(), "fitted_on": fitted_on(opts), "report": lab})
    summary = {"samples": len(samples), "positives": positives, "mapping": report.as_dict()}
    return summary if bins is None else {**summary, "value_bins": lab}


def value_bins_line(summary: dict) -> str:
    """One line on lab tokens for the data stage's output ("" without --value_bins)."""
    lab = summary.get("value_bins")
    if lab is None:
        return ""
    return (f"lab values: {lab['binned_events']}/{lab['numeric_events']} numeric events binned; "
            f"{lab['codes_with_bins']} codes got bins, {lab['codes_plain_too_few_training_values']} stayed plain "
            f"(< {lab['min_training_values']} training values), {lab['codes_plain_no_training_values']} had no "
            "training values (value_bins.json)")


def fitted_on(opts: DataOptions) -> str:
    return ("the training split's values of this cohort" if not opts.value_bins_file
            else f"read from {opts.value_bins_file}")
