"""``medtok-qa ehr eval``: finetuned EhrMamba runs and the gradient-boosting baseline, per task, on the
held-out split, with bootstrap intervals over patients and the rare/unseen-code slice.

    output_dir/metrics.json   every method x task x slice: samples, positives, AUROC/AUPRC/F1, CIs
    output_dir/report.md      the same as tables; tasks that are not estimable say so
    output_dir/scores.parquet every model's score per evaluated sample (tuning split included)
    metrics.json "comparisons" each code embedding minus `learned` on the same backbone and seeds (paired
                              patient bootstrap), per estimable task and slice

Every row names its backbone (mamba = EhrMamba, transformer = the LLaMA-shaped baseline) and code
embedding. The baseline is scikit-learn's HistGradientBoostingClassifier on each sample's code
counts and age (the EhrMamba paper's XGBoost baseline, one model per task).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from commons.config import require_range, save_config
from commons.errors import ConfigError
from commons.io import read_json, write_json, write_text
from ehr.metrics import estimable, paired_difference, rare_code_mask, task_metrics
from ehr.model import collate
from ehr.train import load_prepared, load_trained

SYNTHETIC_NOTE = ("Numbers on the synthetic (clinosim) cohort measure the software, not medicine.")


@dataclass
class EhrEvalConfig:
    """Evaluate finetuned EHR runs and the gradient-boosting baseline per task."""

    data: str = ""  # the prepared folder the runs were trained on
    runs: list[str] = field(default_factory=list)  # finetune run folders
    baseline: bool = True  # also fit and score the gradient-boosting baseline
    output_dir: str = "runs/ehr/eval"
    split: str = "held_out"  # evaluated split
    min_positives: int = 10  # fewer positives (or negatives) evaluated: not estimable
    n_boot: int = 200  # bootstrap resamples of patients
    rare_k: int = 5  # rare-code slice: an input code seen fewer than this many times in training
    seed: int = 0
    batch_size: int = 32
    # at most this many samples per patient, task and split outside training (a seeded choice; 0: all).
    # Intervals resample patients, so a patient's tenth visit adds little but costs as much to score.
    max_per_subject: int = 0

    def __post_init__(self):
        require_range(self, "min_positives", 1)
        require_range(self, "n_boot", 10)
        require_range(self, "rare_k", 1)
        require_range(self, "batch_size", 1)
        require_range(self, "max_per_subject", 0)


@torch.inference_mode()
def predict(model, records: list[dict], batch_size: int) -> np.ndarray:
    """Scores in the records' order; batches of similar length (a sequence's score does not depend on
    its batch, ``ehr.model.collate``), so little time goes into padding."""
    order = np.argsort([len(r["input_ids"]) for r in records], kind="stable")
    scores = np.zeros(len(records), dtype=np.float32)
    for i in range(0, len(records), batch_size):
        idx = order[i:i + batch_size]
        scores[idx] = torch.sigmoid(model.task_logits(collate([records[j] for j in idx]))).numpy()
    return scores


def count_features(frame: pd.DataFrame, vocab) -> np.ndarray:
    """Code counts (one column per vocabulary token) and the age at the last token."""
    x = np.zeros((len(frame), len(vocab) + 1), dtype=np.float32)
    for r, (ids, ages) in enumerate(zip(frame["input_ids"], frame["ages"], strict=True)):
        np.add.at(x[r], np.asarray(ids, dtype=np.int64), 1.0)
        x[r, -1] = ages[-1]
    return x


def baseline_scores(samples: pd.DataFrame, vocab, task: str, seed: int) -> pd.Series | None:
    """Scores of every sample of ``task`` by a baseline fitted on its training samples (None: one class)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    rows = samples[(samples["kind"] == "task") & (samples["task"] == task)]
    train = rows[rows["split"] == "train"]
    if train["label"].nunique() < 2:
        return None
    model = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    # one OpenMP thread: on a shared 2-core machine its default threading ran ~20x slower (48 s vs 2.7 s)
    with threadpool_limits(1):
        model.fit(count_features(train, vocab), train["label"].to_numpy())
        return pd.Series(model.predict_proba(count_features(rows, vocab))[:, 1], index=rows.index)


def evaluate_scores(samples: pd.DataFrame, scores: pd.Series, vocab, cfg: EhrEvalConfig) -> dict:
    """Per task: metrics on the evaluated split and on its rare-code slice."""
    out = {}
    scored = samples.loc[scores.index].assign(score=scores)
    for task, rows in scored.groupby("task"):
        test, tuning = rows[rows["split"] == cfg.split], rows[rows["split"] == "tuning"]
        rare = rare_code_mask(test["codes"], vocab.train_counts, cfg.rare_k)
        out[task] = {"all": task_metrics(test, tuning, cfg.min_positives, cfg.n_boot, cfg.seed),
                     f"rare_codes_lt{cfg.rare_k}": task_metrics(test[rare], tuning, cfg.min_positives,
                                                                  cfg.n_boot, cfg.seed)}
    return out


def _cell(m: dict, key: str) -> str:
    if not m.get("estimable"):
        return "n/e"
    lo, hi = m["ci95"][key]
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def report_markdown(results: dict, positives: dict, cfg: EhrEvalConfig) -> str:
    lines = ["# EHR evaluation", "", SYNTHETIC_NOTE + " (When the data is MIMIC-IV in MEDS, it is not synthetic.)", "",
             f"Split: {cfg.split}; 95% intervals over {cfg.n_boot} bootstrap resamples of patients; "
             f"n/e = not estimable (fewer than {cfg.min_positives} positives or negatives).", ""]
    for slice_name in ("all", f"rare_codes_lt{cfg.rare_k}"):
        lines += [f"## {'All samples' if slice_name == 'all' else f'Rare/unseen-code slice (a code seen < {cfg.rare_k}x in training)'}",
                  "", "| method | task | samples | positives | AUPRC | AUROC | F1 |", "|---|---|---|---|---|---|---|"]
        for method, tasks in results.items():
            for task, slices in sorted(tasks.items()):
                m = slices[slice_name]
                lines.append(f"| {method} | {task} | {m['samples']} | {m['positives']} | {_cell(m, 'auprc')} | "
                             f"{_cell(m, 'auroc')} | {_cell(m, 'f1')} |")
        lines.append("")
    lines += ["## Positives per task and split (from `ehr data`)", "", "| task | train | tuning | held_out | estimable |",
              "|---|---|---|---|---|"]
    for task, p in sorted(positives.items()):
        lines.append(f"| {task} | {p['train']['positives']}/{p['train']['samples']} | "
                     f"{p['tuning']['positives']}/{p['tuning']['samples']} | "
                     f"{p['held_out']['positives']}/{p['held_out']['samples']} | {'yes' if p['estimable'] else 'no'} |")
    return "\n".join(lines) + "\n"


def cap_per_subject(samples: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Keep at most ``k`` task samples per patient, task and split outside training (seeded); the
    training samples (the baseline's fit) and the pretraining sequences stay whole. ``k`` = 0: all."""
    if not k:
        return samples
    capped = (samples["kind"] == "task") & (samples["split"] != "train")
    shuffled = samples[capped].sample(frac=1.0, random_state=seed)
    kept = shuffled.groupby(["task", "split", "subject_id"], sort=False).head(k).index
    return samples[~capped | samples.index.isin(kept)]


def evaluate(cfg: EhrEvalConfig) -> dict:
    samples, vocab = load_prepared(cfg.data)
    samples = cap_per_subject(samples, cfg.max_per_subject, cfg.seed)
    tasks = samples[samples["kind"] == "task"]
    if cfg.split not in set(tasks["split"]):
        raise ConfigError(f"--split {cfg.split}: {cfg.data} has no task samples in that split")
    results, scored, seeds = {}, {}, {}
    rows = tasks[tasks["split"].isin([cfg.split, "tuning"])]
    for run in tqdm(cfg.runs, desc="ehr eval", unit="model"):
        model, run_cfg = load_trained(run, vocab)
        if run_cfg.stage != "finetune":
            raise ConfigError(f"{run} is a {run_cfg.stage} run; evaluate finetune runs (`medtok-qa ehr finetune`)")
        scores = pd.Series(predict(model, rows.to_dict("records"), cfg.batch_size), index=rows.index)
        name = f"{run_cfg.model.backbone}/{run_cfg.model.code_embedding} ({Path(run).name})"
        results[name] = evaluate_scores(samples, scores, vocab, cfg)
        scored[name] = scores
        method = (run_cfg.model.backbone, run_cfg.model.code_embedding)
        seeds.setdefault(method, {})[run_cfg.train.seed] = name
    if cfg.baseline:
        parts = [s for t in sorted(tasks["task"].unique()) if (s := baseline_scores(samples, vocab, t, cfg.seed)) is not None]
        if parts:
            results["hist_gradient_boosting (code counts + age)"] = evaluate_scores(samples, pd.concat(parts), vocab, cfg)
    if not results:
        raise ConfigError("nothing to evaluate: pass --runs FOLDER ... and/or --baseline true")
    positives = read_json(Path(cfg.data) / "positives.json")
    comparisons = compare_to_learned(rows.assign(**scored), seeds, vocab, cfg)
    out = Path(cfg.output_dir)
    save_config(cfg, out / "config.yaml")
    # every model's score per evaluated sample (row = its index in samples.parquet): paired tests re-run on it
    rows[["task", "subject_id", "split", "label"]].assign(**scored).rename_axis("row").to_parquet(out / "scores.parquet")
    write_json(out / "metrics.json", {"note": SYNTHETIC_NOTE, "results": results, "comparisons": comparisons})
    write_text(out / "report.md", report_markdown(results, positives, cfg) + comparisons_markdown(comparisons, cfg.n_boot))
    return results


BASELINE_EMBEDDING = "learned"  # what every other code embedding is compared with, on the same backbone


def compare_to_learned(scored: pd.DataFrame, seeds: dict[tuple[str, str], dict[int, str]], vocab,
                       cfg: EhrEvalConfig) -> list[dict]:
    """Each code embedding minus the learned table on the same backbone and seeds, per estimable task
    and slice: the paired AUPRC/AUROC difference with a patient-bootstrap interval."""
    out = []
    test = scored[scored["split"] == cfg.split]
    rare_name = f"rare_codes_lt{cfg.rare_k}"
    for (backbone, variant), runs in sorted(seeds.items()):
        base = seeds.get((backbone, BASELINE_EMBEDDING))
        common = sorted(set(runs) & set(base or {}))
        if variant == BASELINE_EMBEDDING or not common:
            continue
        for task, rows in test.groupby("task"):
            for slice_name, sel in (("all", rows), (rare_name, rows[rare_code_mask(rows["codes"], vocab.train_counts, cfg.rare_k)])):
                if not estimable(sel["label"].to_numpy(), cfg.min_positives):
                    continue
                diff = paired_difference(sel, [runs[s] for s in common], [base[s] for s in common], cfg.n_boot, cfg.seed)
                out.append({"backbone": backbone, "code_embedding": variant, "baseline": BASELINE_EMBEDDING,
                            "task": task, "slice": slice_name, "seeds": common, "samples": len(sel),
                            "positives": int(sel["label"].sum()), **diff})
    return out


def comparisons_markdown(comparisons: list[dict], n_boot: int) -> str:
    if not comparisons:
        return ""
    lines = [f"## Paired differences from the `{BASELINE_EMBEDDING}` code embedding (same backbone, same seeds)", "",
             f"Mean over seed pairs of (embedding − {BASELINE_EMBEDDING}); 95% interval over {n_boot} resamples of "
             "patients, one resample for both sides.", "",
             "| backbone | code embedding | task | slice | positives/samples | ΔAUPRC | ΔAUROC |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        cells = [f"{c[m]['difference']:+.3f} [{c[m]['ci95'][0]:+.3f}, {c[m]['ci95'][1]:+.3f}]" for m in ("auprc", "auroc")]
        lines.append(f"| {c['backbone']} | {c['code_embedding']} | {c['task']} | {c['slice']} | "
                     f"{c['positives']}/{c['samples']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"
