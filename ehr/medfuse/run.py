"""MedFuse's entry points (typed configs; the ``medtok-qa ehr`` command wires them):

    build_cohort(CohortOptions)         MEDS folder -> samples of triplets, labels, splits, vocab,
                                        training-only normalisation (the EHR data layer's functions)
    train_medfuse(MedFuseConfig)        one model (a fusion, a task, a seed) -> output_dir
    evaluate_medfuse(MedFuseEvalConfig) every fusion x seed, the GRU and gradient-boosting baselines,
                                        AUPRC / AUROC / accuracy with bootstrap intervals ->
                                        output_dir/results.json and results.md (the fusion ablation)

Labels come from the shared task definitions (``ehr.tasks``: MedFuse's ``ehr/medfuse/tasks.yaml``
plus ``shared_tasks`` from ``ehr/tasks.yaml``); a task whose held-out split has fewer than
``min_test_positives`` positives (or negatives) is reported as not estimable, with no metric.
Numbers on the synthetic cohort measure the software, not medicine.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from commons.config import from_dict, load_yaml, require_range, save_config
from commons.errors import ConfigError, DataFileError
from commons.io import atomic_dir, check_writable_dir, write_json, write_text
from ehr.code_maps import get_code_map, map_codes
from ehr.data import code_counts, positives_table
from ehr.medfuse.baselines import fit_predict_hgb
from ehr.medfuse.fusion import fusion_names
from ehr.medfuse.metrics import bootstrap_intervals, paired_difference
from ehr.medfuse.model import GruBaseline, MedFuse, MedFuseOptions, collate
from ehr.medfuse.triplets import NormStats, Windowing, event_rows, fit_normalisation, sample_triplets
from ehr.meds import SPLITS, MedsDataset
from ehr.sequences import PAD, Vocab, build_vocab
from ehr.splits import subject_splits
from ehr.tasks import DEFAULT_TASKS, build_labels, load_tasks

MEDFUSE_TASKS = Path(__file__).with_name("tasks.yaml")
TRAIN, TUNING, HELD_OUT = SPLITS


@dataclass
class CohortOptions:
    """Where the cohort comes from and how each task's input becomes triplets."""

    meds_dir: str = ""  # a MEDS folder (data/*.parquet, metadata/): clinosim's converted cohort or MIMIC-IV's
    source: str = "clinosim"  # code map plug-in (ehr/code_maps/): clinosim, mimic_iv
    tasks_file: str | None = None  # MedFuse's task definitions (none: ehr/medfuse/tasks.yaml)
    tasks: list[str] = field(default_factory=list)  # names from tasks_file (empty: all)
    shared_tasks: list[str] = field(default_factory=lambda: ["los_gt_7d"])  # names from ehr/tasks.yaml
    window_hours: dict = field(default_factory=lambda: {"los_gt_7d": 24})  # task -> look-back override
    bin_hours: dict = field(default_factory=lambda: {"in_hospital_mortality_48h": 2, "los_gt_7d": 2,
                                                     "onset_hyperlipidemia_180d": 2160})  # task -> summarisation bin
    summary: Literal["mean", "last"] = "mean"  # a bin's value
    max_tokens: int = 256  # most recent tokens kept per sample
    max_samples_per_subject: int = 0  # per task, a seeded choice of this many (0: all), for tasks sampled per visit
    seed: int = 0  # the hash split's seed when the MEDS folder has no subject_splits.parquet
    min_test_positives: int = 10  # fewer held-out positives (or negatives): not estimable
    data_dir: str | None = None  # the project's data folder (RxNorm -> ATC tables)

    def __post_init__(self):
        require_range(self, "max_tokens", 1)
        require_range(self, "max_samples_per_subject", 0)
        require_range(self, "min_test_positives", 1)
        for name in ("window_hours", "bin_hours"):
            for task, hours in getattr(self, name).items():
                if not isinstance(hours, (int, float)) or isinstance(hours, bool) or hours <= 0:
                    raise ConfigError(f"cohort.{name}[{task}] must be a positive number of hours, got {hours!r}")


@dataclass
class FitOptions:
    """The optimisation of the neural models (MedFuse, GRU)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    threads: int = 1  # torch CPU threads

    def __post_init__(self):
        for name in ("steps", "batch_size", "threads"):
            require_range(self, name, 1)
        require_range(self, "lr", 0, low_open=True)
        require_range(self, "weight_decay", 0)


@dataclass
class MedFuseConfig:
    """Train one MedFuse model on one task."""

    cohort: CohortOptions = field(default_factory=CohortOptions)
    model: MedFuseOptions = field(default_factory=MedFuseOptions)
    train: FitOptions = field(default_factory=FitOptions)
    task: str = "in_hospital_mortality_48h"
    seed: int = 0
    output_dir: str = "runs/ehr/medfuse/model"


@dataclass
class MedFuseEvalConfig:
    """The fusion ablation (every fusion x seed) and the baselines on every estimable task."""

    cohort: CohortOptions = field(default_factory=CohortOptions)
    model: MedFuseOptions = field(default_factory=MedFuseOptions)
    train: FitOptions = field(default_factory=FitOptions)
    tasks: list[str] = field(default_factory=list)  # empty: every task built
    fusions: list[str] = field(default_factory=lambda: ["mufuse", "additive", "concat"])
    baselines: list[str] = field(default_factory=lambda: ["gru", "hgb"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    n_resamples: int = 500  # bootstrap resamples over patients
    output_dir: str = "runs/ehr/medfuse/eval"

    def __post_init__(self):
        unknown = sorted(set(self.fusions) - set(fusion_names()))
        if unknown or not self.fusions:
            raise ConfigError(f"fusions {unknown or '(none)'}: choose from {', '.join(fusion_names())}")
        bad = sorted(set(self.baselines) - {"gru", "hgb"})
        if bad:
            raise ConfigError(f"baselines {bad}: choose from gru, hgb")
        if len(self.seeds) < 1:
            raise ConfigError("seeds: give at least one seed (the issue asks for >= 3)")
        require_range(self, "n_resamples", 10)


@dataclass
class Cohort:
    """Samples (task, subject_id, prediction_time, label, split + triplet arrays) and what models need."""

    samples: pd.DataFrame
    vocab: Vocab
    stats: NormStats
    positives: dict
    mapping: dict

    def records(self, task: str, split: str) -> list[dict]:
        rows = self.samples[(self.samples["task"] == task) & (self.samples["split"] == split)]
        return rows.to_dict("records")

    def normalised(self, records: list[dict]) -> list[np.ndarray]:
        return [self.stats.normalise(r["tokens"], r["values"], self.vocab) for r in records]


def _tasks(opts: CohortOptions):
    own = load_tasks(opts.tasks_file or MEDFUSE_TASKS, opts.tasks or None)
    shared = load_tasks(DEFAULT_TASKS, opts.shared_tasks) if opts.shared_tasks else []
    clash = {t.name for t in own} & {t.name for t in shared}
    if clash:
        raise ConfigError(f"task(s) {', '.join(sorted(clash))} defined in both task files; rename one")
    return own + shared


def _keep_per_subject(labels: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most ``limit`` samples per (task, subject), a seeded choice (tasks sampled at every visit)."""
    if not limit or labels.empty:
        return labels
    # a hash of (seed, task, subject, time) orders each subject's samples: the choice for one task does
    # not depend on which other tasks are built beside it
    key = pd.util.hash_pandas_object(labels[["task", "subject_id", "prediction_time"]], index=False,
                                     hash_key=f"medfuse{seed:09d}"[:16].ljust(16, "0"))
    return (labels.assign(_key=key.to_numpy()).sort_values("_key").groupby(["task", "subject_id"], sort=False)
            .head(limit).drop(columns="_key").sort_values(["task", "subject_id", "prediction_time"])
            .reset_index(drop=True))


def build_cohort(opts: CohortOptions) -> Cohort:
    """The samples of every task over the MEDS folder, reading one shard at a time."""
    if not opts.meds_dir:
        raise ConfigError("--cohort.meds_dir is required: a MEDS folder (`medtok-qa ehr convert` writes one)")
    dataset = MedsDataset(opts.meds_dir)
    tasks = _tasks(opts)
    splits = subject_splits(dataset, opts.seed)
    split_of = dict(zip(splits["subject_id"], splits["split"], strict=True))
    total, train = code_counts(dataset, splits)
    table, report = map_codes(get_code_map(opts.source, opts.data_dir), total)
    meta = dataset.codes_metadata()
    descriptions = dict(zip(meta["code"], meta["description"].fillna(""), strict=True)) if len(meta) else {}
    vocab = build_vocab(table, descriptions, train, total.index, [])
    labels = _keep_per_subject(build_labels(dataset, tasks), opts.max_samples_per_subject, opts.seed)
    by_subject = dict(iter(labels.groupby("subject_id")))
    windows = {t.name: (t.lookback_days, Windowing(opts.window_hours.get(t.name), opts.bin_hours.get(t.name),
                                                   opts.summary, opts.max_tokens)) for t in tasks}
    rows, train_values = [], []
    for sid, events in dataset.iter_subjects():
        split = split_of.get(sid)
        if split is None:
            continue
        if split == TRAIN:  # normalisation statistics: the training subjects' values only
            train_values.append(event_rows(events, table, vocab))
        if sid not in by_subject:
            continue
        for s in by_subject[sid].itertuples(index=False):
            lookback, windowing = windows[s.task]
            rows.append({"kind": "task", "task": s.task, "subject_id": sid, "prediction_time": s.prediction_time,
                         "label": int(s.label), "split": split,
                         **sample_triplets(events, s.prediction_time, lookback, windowing, table, vocab)})
    samples = pd.DataFrame(rows, columns=["kind", "task", "subject_id", "prediction_time", "label", "split",
                                          "tokens", "values", "hours", "numeric"])
    stats = fit_normalisation(pd.concat(train_values, ignore_index=True) if train_values else
                              pd.DataFrame({"token": [], "value": [], "numeric": []}), vocab)
    positives = positives_table(samples, opts.min_test_positives) if len(samples) else {}
    for t in tasks:  # a task with no sample at all is reported too
        positives.setdefault(t.name, {"estimable": False, "why_not": "no samples in this cohort"})
    return Cohort(samples, vocab, stats, positives, {"source": opts.source, **report.as_dict()})


# ---- training ---------------------------------------------------------------------------------------

def build_model(kind: str, vocab: Vocab, opts: MedFuseOptions, seed: int) -> torch.nn.Module:
    """``medfuse`` (with ``opts.fusion``) or ``gru``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return GruBaseline(vocab, opts) if kind == "gru" else MedFuse(vocab, opts)


def fit(model: torch.nn.Module, records: list[dict], normalised: list[np.ndarray], pad_id: int,
        opts: FitOptions, seed: int) -> list[float]:
    """AdamW on the binary cross-entropy; batches drawn from a generator seeded by ``seed``; the losses."""
    torch.set_num_threads(opts.threads)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr,
                                  weight_decay=opts.weight_decay)
    torch.manual_seed(seed)  # dropout
    model.train()
    losses = []
    for _ in range(opts.steps):
        idx = rng.choice(len(records), min(opts.batch_size, len(records)), replace=False)
        batch = collate([records[i] for i in idx], [normalised[i] for i in idx], pad_id)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(round(loss.item(), 6))
    return losses


@torch.no_grad()
def predict(model: torch.nn.Module, records: list[dict], normalised: list[np.ndarray], pad_id: int,
            batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(records), batch_size):
        batch = collate(records[start:start + batch_size], normalised[start:start + batch_size], pad_id)
        out.append(torch.sigmoid(model(batch)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _training_records(cohort: Cohort, task: str) -> list[dict]:
    records = cohort.records(task, TRAIN)
    if not records:
        have = sorted(set(cohort.samples["task"]))
        raise ConfigError(f"task {task!r} has no training samples in this cohort; tasks with samples: "
                          f"{', '.join(have) or 'none'}")
    return records


def train_medfuse(cfg: MedFuseConfig, cohort: Cohort | None = None) -> Path:
    """Train one MedFuse model; writes model.safetensors, normalisation.json, vocab.json, config.yaml,
    losses.jsonl under ``cfg.output_dir`` (atomically: a failed run leaves nothing half-written)."""
    check_writable_dir(cfg.output_dir, "--output_dir")
    cohort = cohort or build_cohort(cfg.cohort)
    records = _training_records(cohort, cfg.task)
    model = build_model("medfuse", cohort.vocab, cfg.model, cfg.seed)
    losses = fit(model, records, cohort.normalised(records), cohort.vocab.index[PAD], cfg.train, cfg.seed)
    with atomic_dir(cfg.output_dir) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        cohort.stats.save(tmp / "normalisation.json")
        write_json(tmp / "vocab.json", cohort.vocab.to_dict())
        save_config(cfg, tmp / "config.yaml")
        write_text(tmp / "losses.jsonl", "".join(json.dumps({"step": i, "loss": v}) + "\n"
                                                 for i, v in enumerate(losses)))
    return Path(cfg.output_dir)


def load_medfuse(run: str | Path) -> tuple[MedFuse, MedFuseConfig, NormStats, Vocab]:
    """A finished ``train_medfuse`` run: model (eval mode), config, normalisation, vocabulary."""
    run = Path(run)
    if not (run / "model.safetensors").is_file():
        raise DataFileError(f"{run} holds no model.safetensors (not a finished MedFuse run)")
    cfg = from_dict(MedFuseConfig, load_yaml(run / "config.yaml"))
    vocab = Vocab.from_dict(json.loads((run / "vocab.json").read_text()))
    model = build_model("medfuse", vocab, cfg.model, cfg.seed)
    model.load_state_dict(load_file(run / "model.safetensors"))
    return model.eval(), cfg, NormStats.load(run / "normalisation.json"), vocab


# ---- evaluation -------------------------------------------------------------------------------------

def _method_probs(method: str, cohort: Cohort, task: str, cfg: MedFuseEvalConfig, test: list[dict],
                  test_norm: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Held-out probabilities per seed of one method, and seconds spent."""
    train = _training_records(cohort, task)
    train_norm = cohort.normalised(train)
    pad = cohort.vocab.index[PAD]
    started, probs = time.perf_counter(), []
    for seed in cfg.seeds:
        if method == "hgb":
            probs.append(fit_predict_hgb(train, train_norm, test, test_norm, seed))
            continue
        kind, opts = ("gru", cfg.model) if method == "gru" else (
            "medfuse", dataclasses.replace(cfg.model, fusion=method.split(":", 1)[1]))
        model = build_model(kind, cohort.vocab, opts, seed)
        fit(model, train, train_norm, pad, cfg.train, seed)
        probs.append(predict(model, test, test_norm, pad))
    return probs, time.perf_counter() - started


def _as_dict(opts) -> dict:
    from commons.config import to_dict

    return to_dict(opts)


def evaluate_medfuse(cfg: MedFuseEvalConfig, cohort: Cohort | None = None) -> dict:
    """The fusion ablation and baselines on every estimable task; writes results.json and results.md."""
    check_writable_dir(cfg.output_dir, "--output_dir")
    cohort = cohort or build_cohort(cfg.cohort)
    tasks = cfg.tasks or sorted(cohort.positives)
    unknown = sorted(set(tasks) - set(cohort.positives))
    if unknown:
        raise ConfigError(f"task(s) {', '.join(unknown)} not built; built: {', '.join(sorted(cohort.positives))}")
    methods = [f"medfuse:{f}" for f in cfg.fusions] + list(cfg.baselines)
    results = {"synthetic_note": "numbers on a synthetic cohort measure the software, not medicine",
               "meds_dir": cfg.cohort.meds_dir, "seeds": list(cfg.seeds), "model": _as_dict(cfg.model),
               "train": _as_dict(cfg.train), "positives": cohort.positives, "tasks": {}}
    for task in tasks:
        if not cohort.positives[task].get("estimable"):
            results["tasks"][task] = {"estimable": False, "why_not": cohort.positives[task].get("why_not", "")}
            continue
        test = cohort.records(task, HELD_OUT)
        test_norm = cohort.normalised(test)
        labels = np.array([r["label"] for r in test])
        subjects = np.array([r["subject_id"] for r in test])
        per_method, probs_of = {}, {}
        for method in methods:
            probs_of[method], seconds = _method_probs(method, cohort, task, cfg, test, test_norm)
            per_method[method] = {**bootstrap_intervals(labels, probs_of[method], subjects, cfg.n_resamples),
                                  "seconds": round(seconds, 1),
                                  "held_out_probs_by_seed": [np.round(p, 5).tolist() for p in probs_of[method]]}
        reference = methods[0]  # the first fusion (MuFuse by default) against every other method, paired
        differences = {f"{reference} - {m}": paired_difference(labels, probs_of[reference], probs_of[m], subjects,
                                                               "auprc", cfg.n_resamples)
                       for m in methods[1:]}
        results["tasks"][task] = {"estimable": True, "test_samples": len(test), "test_positives": int(labels.sum()),
                                  "held_out_labels": labels.tolist(), "held_out_subjects": subjects.tolist(),
                                  "methods": per_method, "auprc_differences": differences}
    with atomic_dir(cfg.output_dir) as tmp:  # written once everything is computed: never half a result
        write_json(tmp / "results.json", results)
        write_text(tmp / "results.md", results_markdown(results))
        save_config(cfg, tmp / "config.yaml")
    return results


def results_markdown(results: dict) -> str:
    """The fusion ablation and baselines per task: mean over seeds [95% bootstrap CI over patients]."""
    lines = ["# MedFuse: fusion ablation and baselines (synthetic cohort)", "",
             f"**Synthetic data**: {results['synthetic_note']}. Cohort: `{results['meds_dir']}`; "
             f"seeds {results['seeds']}; metric = mean over seeds [95% bootstrap CI over patients] (seed sd).", ""]
    return "\n".join(lines + ablation_tables(results))


def ablation_tables(results: dict, heading: str = "##") -> list[str]:
    """Per task (a ``heading`` each): the methods' AUPRC / AUROC / accuracy table and the paired AUPRC
    differences, or why the task is not estimable (results.json, or its summary without probabilities)."""
    lines = []
    for task, r in results["tasks"].items():
        lines.append(f"{heading} {task}")
        if not r["estimable"]:
            lines += ["", f"Not estimable: {r['why_not']}.", ""]
            continue
        lines += ["", f"Held-out samples {r['test_samples']}, positives {r['test_positives']}.", "",
                  "| method | AUPRC | AUROC | accuracy | seconds |", "|---|---|---|---|---|"]
        for method, m in r["methods"].items():
            cells = [f"{m[k]['mean']:.3f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}] ({m[k]['seed_sd']:.3f})"
                     for k in ("auprc", "auroc", "accuracy")]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {m['seconds']} |")
        lines += ["", "AUPRC differences, paired over the same patient resamples (95% CI):", ""]
        lines += [f"- {pair}: {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                  for pair, d in r["auprc_differences"].items()]
        lines.append("")
    return lines
