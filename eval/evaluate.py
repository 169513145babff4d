"""Evaluation of QA checkpoints and zero-shot base models by difficulty tier.

Three layers, each usable alone (the tests drive the last two with fixed toy predictions):

1. :func:`score_sources` turns checkpoints / base models / saved prediction files into
   :class:`Run` objects (one per checkpoint, i.e. per method and seed);
2. :func:`summarize` computes every statistic of the report from the questions and the runs
   (pure: no model, no files);
3. :func:`write_outputs` writes ``results.json``, ``report.md``, ``predictions/<method>.jsonl``
   and the plots.

Which questions are evaluated: questions of the configured tiers that no evaluated checkpoint
trained on. When the checkpoints carry a ``split.json``, the Intermediate tier is restricted to
their held-out validation slice (the questions they did not train on, chosen by option set).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from commons.config import FieldError, require_choice, require_range
from commons.errors import ConfigError, UserError
from commons.fileset import recover
from commons.io import atomic_path, read_json, write_json
from commons.runident import refuse_other_run
from disease_linking.layouts import AUTO, layout_names, load_question_items, policy, question_file
from disease_linking.questions import LETTERS, TIERS, MCQItem, require_answers
from eval import collapse, permutations, report, stats
from eval.provenance import provenance
from eval.report import ALL, ZERO_SHOT, method_rank
from qa.checkpoint import find_checkpoint, read_checkpoint_config
from qa.token_cache import questions_sha


# --------------------------------------------------------------------------------------- config
@dataclass
class BootstrapConfig:
    """Percentile bootstrap of accuracy."""

    n_resamples: int = 2000  # bootstrap resamples
    confidence_level: float = 0.95  # interval coverage
    seed: int = 0  # bootstrap seed

    def __post_init__(self):
        require_range(self, "n_resamples", 1)
        require_range(self, "confidence_level", 0.0, 1.0, low_open=True, high_open=True)


@dataclass
class EvalConfig:
    """Evaluate QA checkpoints and zero-shot base models on a (linked) MCQ dataset, by tier."""

    data: str = ""  # linked JSONL or any MCQ file (MedDDx / authors' layout); "" = MedDDx from the data dir
    data_dir: str | None = None  # data directory (default: $MEDTOK_DATA_DIR or ../shared/data)
    # How data is read: auto (each question recognised by its keys) or a registered layout; a hub
    # layout (medmcqa) without data downloads its hub dataset, only with allow_network.
    layout: str = field(default=AUTO, metadata={"choices": layout_names})
    allow_network: bool = False  # let a hub layout download its dataset from the Hugging Face hub
    hub_split: str = "validation"  # the split a hub layout reads (MedMCQA's test split hides its answers)
    checkpoints: list[str] = field(default_factory=list)  # QA checkpoint folders (method + seed each)
    # Embeddings-only reference folders (python -m recipes.reference), scored beside the LLM methods.
    references: list[str] = field(default_factory=list)
    zero_shot: list[str] = field(default_factory=list)  # base models scored without fine-tuning ("default")
    # dtype of zero-shot models: auto = bfloat16 on a GPU, float32 on CPU (CPUs without native bf16
    # run bf16 matmuls far slower than fp32).
    zero_shot_dtype: str = "auto"
    predictions: list[str] = field(default_factory=list)  # saved predictions/<method>.jsonl to re-report
    # MedTok artifact of the experiment: the report states its collapse rate (questions where two
    # options map onto the same artifact code). "" = no collapse rate.
    medtok: str = ""
    codes_per_mention: int = 1  # codes per linked mention when resolving options (the fine-tunes' value)
    output: str = "runs/eval"  # folder of results.json, report.md, plots
    tiers: list[str] = field(default_factory=lambda: list(TIERS))  # tiers to report
    # What tiers are called in the report, as TIER=title, e.g. "Basic=in-graph test" for questions
    # whose tiers carry other splits (medtok-qa kgqa); empty: the tier names.
    tier_titles: list[str] = field(default_factory=list)
    max_per_tier: int = 0  # 0 = all; else a fixed pseudo-random subset of each tier (quick runs)
    baseline: str = "none"  # the method every other method is compared against (McNemar)
    exact_below: int = 25  # McNemar: exact binomial test when fewer discordant questions
    # Questions per scoring call (progress granularity); the model sorts each call by length into
    # its own batches, so larger calls waste less compute on padding.
    batch_size: int = 128
    # Score every question under this many cyclic option orders (1: the file's order only);
    # reports accuracy per order, mean, spread and the permutation-debiased accuracy.
    permutations: int = 1
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    # Models scored at a time, each in its own process on cores/workers threads. Each model's
    # scores are kept in <output>/scored/ as it finishes: a rerun after a kill scores only the rest.
    workers: int = 1
    plots: bool = True  # write the PNG plots
    skip_invalid: bool = False  # leave out malformed questions (reported) instead of stopping
    # Load checkpoints/references written before manifests were required (warns; only folders you trust).
    allow_unverified: bool = False
    force: bool = False  # replace an evaluation in --output made with other settings (otherwise an error)

    def __post_init__(self):
        for pair in self.tier_titles:
            tier, _, title = pair.partition("=")
            if tier not in TIERS or not title.strip():
                raise FieldError("tier_titles", f"holds {pair!r}; write TIER=title with TIER one of {', '.join(TIERS)}")
        for tier in self.tiers:
            if tier not in TIERS:
                raise FieldError("tiers", f"holds unknown tier {tier!r}; choose from {', '.join(TIERS)}")
        require_range(self, "max_per_tier", 0)
        require_range(self, "codes_per_mention", 1)
        require_range(self, "exact_below", 0)
        require_range(self, "batch_size", 1)
        require_range(self, "permutations", 1, 5)  # at most one order per letter
        require_range(self, "workers", 1)
        require_choice(self, "layout", layout_names())


# Settings that change how an evaluation runs, not what it finds.
NOT_RESULTS = ("workers", "batch_size", "force")
EVAL_JOURNAL = ".eval.txn.json"  # the journal of the outputs' replacement (medtok_core/fileset.py)


# ------------------------------------------------------------------------------------------ runs
class Scorer(Protocol):
    def score(self, items: Sequence[MCQItem]) -> list[dict]: ...


@dataclass
class Run:
    """Predictions of one model (one method, one seed) keyed by question id."""

    method: str
    seed: int | None
    source: str
    predictions: dict[str, dict] = field(default_factory=dict)  # id -> {"pred", "probs", "n_codes"}
    train_ids: frozenset[str] = frozenset()
    val_ids: frozenset[str] | None = None  # held-out slice of the checkpoint's split, if any
    seconds: float | None = None  # scoring time
    # Per cyclic option order s (order 0 = ``predictions``): id -> {"pred", "probs"} in the
    # question's original letters. Empty when scored in one order only.
    orders: list[dict[str, dict]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.method if self.seed is None else f"{self.method} (seed {self.seed})"


@dataclass
class Source:
    """Something to score: a checkpoint folder or a base model for zero-shot."""

    kind: str  # "checkpoint" | "zero-shot" | "reference"
    path: str
    method: str
    seed: int | None
    train_ids: frozenset[str] = frozenset()
    val_ids: frozenset[str] | None = None
    dtype: str = "auto"  # zero-shot models only (a checkpoint keeps its training dtype)
    allow_unverified: bool = False  # load a folder without a manifest (legacy; warns)


def _beside(folder: Path, name: str) -> Path | None:
    """``name`` in the checkpoint folder or in its run folder (a checkpoint may be ``run/best``)."""
    for candidate in (folder / name, folder.parent / name):
        if candidate.is_file():
            return candidate
    return None


def _read_split(folder: Path) -> tuple[frozenset[str], frozenset[str] | None]:
    split_path = _beside(folder, "split.json")
    if split_path is None:
        return frozenset(), None
    split = read_json(split_path)
    if not isinstance(split, dict) or "train" not in split:
        raise UserError(f"{split_path} must be a JSON object with 'train' and 'val' id lists")
    val = split.get("val")
    return frozenset(map(str, split["train"])), (None if val is None else frozenset(map(str, val)))


def _read_train_seed(folder: Path, qa_config: dict) -> int | None:
    if "seed" in qa_config:
        return int(qa_config["seed"])
    cfg_path = _beside(folder, "train_config.yaml")
    if cfg_path is not None:
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        if isinstance(cfg, dict) and cfg.get("seed") is not None:
            return int(cfg["seed"])
    return None


def checkpoint_source(path: str | Path) -> Source:
    """Describe a QA checkpoint folder: method (prefix mode), seed, and its train/val split."""
    folder = find_checkpoint(path)
    qa_config = read_checkpoint_config(folder)
    method = qa_config["prefix_mode"]
    train_ids, val_ids = _read_split(folder)
    return Source("checkpoint", str(folder), method, _read_train_seed(folder, qa_config), train_ids, val_ids)


def reference_source(path: str | Path) -> Source:
    """Describe an embeddings-only reference folder: its name (the method), seed and split."""
    from qa.reference import read_reference_config

    cfg = read_reference_config(path)
    train_ids, val_ids = _read_split(Path(path))
    return Source("reference", str(path), cfg["name"], cfg.get("seed"), train_ids, val_ids)


def _load_scorer(source: Source) -> Scorer:
    # Imported here: the QA model pulls in torch/transformers, which re-reporting does not need.
    if source.kind == "reference":
        from qa.reference import load_reference

        return load_reference(source.path, allow_unverified=source.allow_unverified)
    from qa import model as qa_model

    if source.kind == "checkpoint":
        return qa_model.load_qa_checkpoint(source.path, allow_unverified=source.allow_unverified)
    from qa.base_model import resolve_dtype

    kwargs = {"dtype": resolve_dtype(source.dtype)}
    if source.path not in ("", "default"):
        kwargs["base_model"] = source.path
    return qa_model.zero_shot_model(**kwargs)


def score_items(scorer: Scorer, items: Sequence[MCQItem], batch_size: int,
                progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Score ``items`` in batches; returns id -> prediction dict (checks the scorer's answers)."""
    out: dict[str, dict] = {}
    for start in range(0, len(items), max(1, batch_size)):
        batch = items[start:start + batch_size]
        results = scorer.score(list(batch))
        if len(results) != len(batch):
            raise RuntimeError(f"scorer returned {len(results)} results for {len(batch)} questions")
        for item, res in zip(batch, results, strict=True):
            if str(res.get("id")) != item.id:
                raise RuntimeError(f"scorer returned id {res.get('id')!r} for question {item.id!r}")
            out[item.id] = {"pred": res["pred"], "probs": res.get("probs", {}),
                            "n_codes": int(res.get("n_codes", 0))}
        if progress:
            progress(min(start + batch_size, len(items)), len(items))
    return out


def load_prediction_runs(path: str | Path) -> list[Run]:
    """Runs from a predictions JSONL written by :func:`write_outputs` (one run per method+seed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file {path} does not exist")
    runs: dict[tuple[str, int | None], Run] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (str(rec["method"]), rec.get("seed"))
            run = runs.setdefault(key, Run(key[0], key[1], str(rec.get("source", path))))
            run.predictions[str(rec["id"])] = {"pred": rec["pred"], "probs": rec.get("probs", {}),
                                               "n_codes": int(rec.get("n_codes", 0))}
            for shift, order in enumerate(rec.get("orders") or []):
                if len(run.orders) <= shift:
                    run.orders.append({})
                run.orders[shift][str(rec["id"])] = {"pred": order["pred"], "probs": order.get("probs", {})}
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path}:{n}: not a prediction record ({err})") from None
    return list(runs.values())


# ------------------------------------------------------------------------------ question selection
def has_linked_codes(item: MCQItem) -> bool:
    return any(m.codes for m in item.mentions) or bool(item.medical_codes)


def _stable_rank(item_id: str) -> str:
    # A fixed pseudo-random order independent of file order (which may be sorted by topic).
    return hashlib.sha256(item_id.encode()).hexdigest()


def select_items(items: Sequence[MCQItem], tiers: Sequence[str], train_ids: Iterable[str],
                 val_ids: frozenset[str] | None, max_per_tier: int = 0) -> list[MCQItem]:
    """Questions to evaluate: in ``tiers`` (all when none is tiered), never trained on, and, for
    Intermediate, inside the held-out slice ``val_ids`` when one is given."""
    excluded = set(train_ids)
    tiered = any(it.tier for it in items)
    chosen: dict[str, list[MCQItem]] = {}
    for it in items:
        if it.id in excluded:
            continue
        if tiered and it.tier not in tiers:
            continue
        if it.tier == "Intermediate" and val_ids is not None and it.id not in val_ids:
            continue
        chosen.setdefault(it.tier or ALL, []).append(it)
    out: list[MCQItem] = []
    for tier in [*tiers, ALL]:
        group = chosen.get(tier, [])
        if max_per_tier and len(group) > max_per_tier:
            keep = {it.id for it in sorted(group, key=lambda it: _stable_rank(it.id))[:max_per_tier]}
            group = [it for it in group if it.id in keep]
        out.extend(group)
    return out


def left_out_counts(items: Sequence[MCQItem], selected: Sequence[MCQItem], tiers: Sequence[str],
                    train_ids: Iterable[str], val_ids: frozenset[str] | None) -> dict[str, int]:
    """Why each question of the file that is not in ``selected`` was left out: reason -> count,
    the reasons in the order :func:`select_items` applies them (the first that applies counts)."""
    chosen, excluded = {it.id for it in selected}, set(train_ids)
    tiered = any(it.tier for it in items)
    counts: dict[str, int] = {}
    for it in items:
        if it.id in chosen:
            continue
        if it.id in excluded:
            reason = "a checkpoint trained on them"
        elif tiered and it.tier not in tiers:
            reason = f"their tier is not in --tiers {','.join(tiers)}"
        elif it.tier == "Intermediate" and val_ids is not None and it.id not in val_ids:
            reason = "they are Intermediate questions outside the checkpoints' held-out split (split.json)"
        else:
            reason = "they are over --max_per_tier or no run of --predictions scored them"
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def held_out_ids(sources: Sequence[Source]) -> frozenset[str] | None:
    """Intermediate questions held out by every checkpoint (intersection of their val slices)."""
    slices = [s.val_ids for s in sources if s.val_ids is not None]
    if not slices:
        return None
    common = frozenset.intersection(*slices)
    return common


# ------------------------------------------------------------------------------------ statistics
def _tier_groups(items: Sequence[MCQItem], tiers: Sequence[str]) -> dict[str, list[MCQItem]]:
    groups: dict[str, list[MCQItem]] = {}
    if any(it.tier for it in items):  # untiered data (authors' layout): the "All" row only
        for tier in tiers:
            groups[tier] = [it for it in items if it.tier == tier]
    groups[ALL] = list(items)
    return groups


def _run_tier_stats(run: Run, group: Sequence[MCQItem], alphabet: str, boot: BootstrapConfig) -> dict:
    def acc(sub: Sequence[MCQItem]) -> dict:
        return stats.accuracy_ci([run.predictions[it.id]["pred"] for it in sub],
                                 [it.answer for it in sub], confidence_level=boot.confidence_level,
                                 n_resamples=boot.n_resamples, seed=boot.seed)

    linked = [it for it in group if has_linked_codes(it)]
    unlinked = [it for it in group if not has_linked_codes(it)]
    n_codes = [run.predictions[it.id]["n_codes"] for it in group]
    return {
        **acc(group),
        "accuracy_linked": acc(linked),
        "accuracy_unlinked": acc(unlinked),
        # For a reference: accuracy where it did not fall back to uniform (its coverage).
        "accuracy_codes_used": acc([it for it in group if run.predictions[it.id]["n_codes"] > 0]),
        "mean_codes_used": (sum(n_codes) / len(n_codes)) if n_codes else None,
        "share_with_codes_used": (sum(1 for k in n_codes if k > 0) / len(n_codes)) if n_codes else None,
        "pred_distribution": stats.letter_distribution((run.predictions[it.id]["pred"] for it in group), alphabet),
    }


def _dataset_tier_stats(group: Sequence[MCQItem], alphabet: str) -> dict:
    answers = [it.answer for it in group]
    return {
        "n": len(group),
        "n_linked": sum(has_linked_codes(it) for it in group),
        "share_linked": (sum(has_linked_codes(it) for it in group) / len(group)) if group else None,
        "answer_distribution": stats.letter_distribution(answers, alphabet),
        "majority_letter": stats.majority_letter_baseline(answers, alphabet),
        "chance": stats.chance_accuracy([len(it.options) for it in group]),
    }


def _baseline_partner(run: Run, baseline_runs: Sequence[Run]) -> Run | None:
    """The baseline run to compare ``run`` with: same seed when there is one, else the first."""
    if not baseline_runs:
        return None
    for b in baseline_runs:
        if b.seed == run.seed:
            return b
    return baseline_runs[0]


def summarize(items: Sequence[MCQItem], runs: Sequence[Run], *, tiers: Sequence[str] = TIERS,
              baseline: str = "none", boot: BootstrapConfig | None = None,
              exact_below: int = 25, held_out: bool = False) -> dict[str, Any]:
    """All statistics of the report. ``items`` are the evaluated questions; every run must have
    a prediction for each of them."""
    boot = boot or BootstrapConfig()
    for run in runs:
        missing = [it.id for it in items if it.id not in run.predictions]
        if missing:
            raise UserError(f"{run.label} ({run.source}) has no prediction for {len(missing)} of the "
                              f"{len(items)} evaluated questions (e.g. {missing[0]}); score it again")
        if any(it.id not in order for order in run.orders for it in items):
            raise UserError(f"{run.label} ({run.source}) lacks a permuted-order prediction for some "
                              "evaluated question; score it again")
    n_options = max((len(it.options) for it in items), default=4)
    alphabet = LETTERS[:n_options]
    groups = _tier_groups(items, tiers)
    runs = sorted(runs, key=lambda r: (method_rank(r.method), r.seed if r.seed is not None else -1))

    run_results = []
    for run in runs:
        run_results.append({
            "label": run.label, "method": run.method, "seed": run.seed, "source": run.source,
            "seconds": run.seconds,
            "tiers": {t: _run_tier_stats(run, g, alphabet, boot) for t, g in groups.items()},
        })
        if run.orders:
            run_results[-1]["option_orders"] = {t: permutations.order_accuracies(g, run.orders)
                                                for t, g in groups.items()}

    methods: dict[str, Any] = {}
    for res in run_results:
        methods.setdefault(res["method"], []).append(res)
    method_results = {
        m: {"n_runs": len(rs), "seeds": [r["seed"] for r in rs],
            "tiers": {t: stats.mean_spread([r["tiers"][t]["accuracy"] for r in rs]) for t in groups}}
        for m, rs in methods.items()
    }
    for m, rs in methods.items():
        if all("option_orders" in r for r in rs):
            method_results[m]["option_orders"] = {t: _mean_order_stats([r["option_orders"][t] for r in rs])
                                                  for t in groups}

    baseline_runs = [r for r in runs if r.method == baseline]
    comparisons = []
    for run in runs:
        partner = None if run.method == baseline else _baseline_partner(run, baseline_runs)
        if partner is None:
            continue
        for tier, group in groups.items():
            refs = [it.answer for it in group]
            # Baseline first: b = only the baseline right, c = only this method right.
            test = stats.mcnemar([partner.predictions[it.id]["pred"] for it in group],
                                 [run.predictions[it.id]["pred"] for it in group], refs, exact_below)
            comparisons.append({"method": run.method, "seed": run.seed, "baseline": baseline,
                                "baseline_seed": partner.seed, "tier": tier, **test})

    return {
        "alphabet": alphabet,
        "tiers": list(groups),
        "option_orders": len(runs[0].orders) if runs and all(r.orders for r in runs) else 1,
        "held_out_intermediate": held_out,
        "bootstrap": {"n_resamples": boot.n_resamples, "confidence_level": boot.confidence_level,
                      "seed": boot.seed},
        "dataset": {t: _dataset_tier_stats(g, alphabet) for t, g in groups.items()},
        "runs": run_results,
        "methods": method_results,
        "baseline": baseline,
        "comparisons": comparisons,
        "seed_bootstrap": _seed_bootstrap(runs, groups, baseline, boot),
    }


def _mean_order_stats(per_run: Sequence[dict]) -> dict:
    """Order statistics averaged over a method's seeds (per order, mean, spread, debiased)."""
    if not per_run or per_run[0]["n"] == 0:
        return per_run[0] if per_run else {}
    k = len(per_run[0]["per_order"])
    per_order = [sum(r["per_order"][s] for r in per_run) / len(per_run) for s in range(k)]
    return {"n": per_run[0]["n"], "n_seeds": len(per_run), "per_order": per_order,
            "mean": sum(per_order) / k, "spread": max(per_order) - min(per_order),
            "debiased": sum(r["debiased"] for r in per_run) / len(per_run)}


def _seed_bootstrap(runs: Sequence[Run], groups: dict[str, list[MCQItem]], baseline: str,
                    boot: BootstrapConfig) -> list[dict]:
    """Every method vs the baseline, per tier: difference of seed-averaged accuracies with a
    bootstrap interval over questions and seeds (:func:`eval.stats.seed_bootstrap_difference`)."""
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    if baseline not in by_method:
        return []
    out = []
    for method, method_runs in by_method.items():
        if method == baseline:
            continue
        for tier, group in groups.items():
            if not group:
                continue
            correct = [[r.predictions[it.id]["pred"] == it.answer for it in group] for r in method_runs]
            reference = [[r.predictions[it.id]["pred"] == it.answer for it in group] for r in by_method[baseline]]
            test = stats.seed_bootstrap_difference(correct, reference, n_resamples=boot.n_resamples,
                                                   confidence_level=boot.confidence_level, seed=boot.seed)
            out.append({"method": method, "baseline": baseline, "tier": tier, **test})
    return out


# --------------------------------------------------------------------------------------- outputs
def prediction_records(items: Sequence[MCQItem], run: Run) -> list[dict]:
    out = []
    for it in items:
        p = run.predictions[it.id]
        out.append({"id": it.id, "tier": it.tier, "answer": it.answer, "pred": p["pred"],
                    "correct": p["pred"] == it.answer, "probs": p["probs"], "n_codes": p["n_codes"],
                    "linked": has_linked_codes(it), "method": run.method, "seed": run.seed,
                    "source": run.source})
        if run.orders:
            out[-1]["orders"] = [order[it.id] for order in run.orders]
    return out


def write_predictions(out_dir: Path, items: Sequence[MCQItem], runs: Sequence[Run]) -> dict[str, str]:
    """One JSONL per method (all its seeds); returns method -> path."""
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    paths = {}
    for method, method_runs in by_method.items():
        path = out_dir / "predictions" / f"{method}.jsonl"
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for run in method_runs:
                for rec in prediction_records(items, run):
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        paths[method] = str(path)
    return paths


def write_outputs(results: dict, items: Sequence[MCQItem], runs: Sequence[Run], out_dir: str | Path,
                  plots: bool = True, config: Any = None) -> dict[str, str]:
    """Write predictions, plots, report.md, eval_config.yaml (``config``) and results.json as one
    set (medtok_core/fileset.py): a kill or a full disk leaves the previous evaluation whole or
    this one whole. Data first, the files describing it last."""
    from commons.config import config_yaml
    from commons.fileset import replace_together
    from commons.runident import inputs_json, inputs_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    predictions = {method: out / "predictions" / f"{method}.jsonl" for method in by_method}
    plot_files = {"accuracy_by_tier": out / "accuracy_by_tier.png", "letter_bias": out / "letter_bias.png"}
    config_file = out / "eval_config.yaml"
    described = [out / "report.md"] + ([inputs_path(config_file), config_file] if config is not None else [])
    targets = [*predictions.values(), *(plot_files.values() if plots else ()), *described, out / "results.json"]
    files: dict[str, Any] = {"predictions": {m: str(p) for m, p in predictions.items()}}
    with replace_together(targets, out / EVAL_JOURNAL) as tmp:
        for method, path in predictions.items():
            with open(tmp[path], "w", encoding="utf-8") as f:
                for run in by_method[method]:
                    for rec in prediction_records(items, run):
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if plots:
            report.plot_accuracy(results, tmp[plot_files["accuracy_by_tier"]])
            report.plot_letter_bias(results, tmp[plot_files["letter_bias"]])
            files["plots"] = {name: str(path) for name, path in plot_files.items()}
        results = {**results, "files": files, "provenance": provenance([r.seed for r in runs]),
                   "detectable_difference": detectable_differences(results)}
        tmp[out / "report.md"].write_text(report.render_report(results), encoding="utf-8")
        files["report"] = str(out / "report.md")
        if config is not None:
            tmp[inputs_path(config_file)].write_text(inputs_json(config), encoding="utf-8")
            tmp[config_file].write_text(config_yaml(config), encoding="utf-8")
        tmp[out / "results.json"].write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    files["results"] = str(out / "results.json")
    return files


def detectable_differences(results: dict, baseline: float = 0.25) -> dict:
    """Per evaluated tier: the smallest gain over ``baseline`` (chance) its test size detects with
    80 % power at alpha 0.05 (:func:`eval.stats.minimum_detectable_difference`)."""
    per_tier = {t: stats.minimum_detectable_difference(int(row.get("n") or 0), baseline)
                for t, row in results.get("dataset", {}).items() if isinstance(row, dict)}
    return {"baseline": baseline, "alpha": 0.05, "power": 0.8, "tiers": per_tier}


# ---------------------------------------------------------------------------------- orchestration
def sources_from_config(cfg: EvalConfig) -> list[Source]:
    sources = [checkpoint_source(p) for p in cfg.checkpoints]
    sources += [reference_source(p) for p in cfg.references]
    if cfg.allow_unverified:
        sources = [dataclasses.replace(s, allow_unverified=True) for s in sources]
    sources += [Source("zero-shot", base, ZERO_SHOT, None, dtype=cfg.zero_shot_dtype) for base in cfg.zero_shot]
    return sources


def load_dataset(cfg: EvalConfig) -> list[MCQItem]:
    path = question_file(cfg.data, cfg.layout, cfg.data_dir)
    items, _ = load_question_items(path, cfg.layout, cfg.skip_invalid, cfg.allow_network, cfg.hub_split)
    if not items:
        raise UserError(f"{path or cfg.layout} contains no questions")
    unknown = sorted({it.tier for it in items if it.tier} - set(TIERS))
    if unknown:
        raise UserError(f"{path}: unknown tier {unknown[0]!r}; tiers are {', '.join(TIERS)}")
    return require_answers(items, path or cfg.layout, cfg.skip_invalid)


def _print_progress(label: str) -> Callable[[int, int], None]:
    start = time.perf_counter()

    def report_progress(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"  {label}: {done}/{total} questions ({rate:.1f}/s)", flush=True)

    return report_progress


# ------------------------------------------------------------------------------------ scoring
SCORED = "scored"  # <output>/scored/: one finished model's scores per file, for resuming


def _folder_digest(path: Path) -> str:
    """Digest of every file under a checkpoint/reference folder (names and contents)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


# Part of every saved score's key: bumped when the arithmetic of scoring changes, so scores saved
# before it are computed anew (2: letter logits in float32, qa.model.QAModel._letter_logits).
SCORING_VERSION = 2


def scoring_key(src: Source, questions_sha: str, batch_size: int, orders: int) -> str:
    """What a model's scores depend on: the model (its files' contents), the questions as scored
    (``qa.token_cache.questions_sha``: codes included) and how they are scored (batching moves
    bf16 logits by padding)."""
    model = (_folder_digest(Path(src.path)) if src.kind in ("checkpoint", "reference")
             else f"{src.path}:{src.dtype}")
    payload = json.dumps([SCORING_VERSION, src.kind, src.method, src.seed, model, questions_sha, batch_size, orders],
                         sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _scored_path(folder: Path, src: Source, key: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{src.method}-{src.seed}")
    return folder / f"{slug}-{key}.json"


def save_scored_run(path: Path, run: Run) -> None:
    write_json(path, {"method": run.method, "seed": run.seed, "source": run.source, "seconds": run.seconds,
                      "predictions": run.predictions, "orders": run.orders})


def load_scored_run(path: Path, src: Source) -> Run | None:
    """The run saved at ``path`` for ``src``, or None when there is none (or it is unreadable)."""
    try:
        saved = read_json(path)
        return Run(src.method, src.seed, src.path, predictions=saved["predictions"], train_ids=src.train_ids,
                   val_ids=src.val_ids, seconds=saved.get("seconds"), orders=saved.get("orders") or [])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def score_source(src: Source, items: Sequence[MCQItem], batch_size: int = 32, orders: int = 1,
                 log: Callable[[str], None] = print) -> Run:
    """Score one source; with ``orders`` > 1 each question is also scored under that many cyclic
    option orders (order 0, the file's own, gives ``predictions``)."""
    run = Run(src.method, src.seed, src.path, train_ids=src.train_ids, val_ids=src.val_ids)
    log(f"scoring {run.label} from {src.path} on {len(items)} questions"
        + (f" x {orders} option orders" if orders > 1 else ""))
    t0 = time.perf_counter()
    scorer = _load_scorer(src)
    if orders > 1:
        score = functools.partial(score_items, scorer, batch_size=batch_size, progress=_print_progress(run.label))
        run.orders = permutations.score_orders(score, items, orders)
        run.predictions = dict(run.orders[0])  # order 0 is the file's own order
    else:
        run.predictions = score_items(scorer, items, batch_size, _print_progress(run.label))
    run.seconds = time.perf_counter() - t0
    return run


def _score_and_save(src: Source, items: Sequence[MCQItem], batch_size: int, orders: int,
                    path: Path | None, threads: int | None = None, log: Callable[[str], None] = print) -> Run:
    if threads:  # a worker process: its share of the cores
        import torch

        torch.set_num_threads(threads)
    run = score_source(src, items, batch_size, orders, log)
    if path is not None:
        save_scored_run(path, run)
    return run


def score_sources(sources: Sequence[Source], items: Sequence[MCQItem], batch_size: int = 32,
                  log: Callable[[str], None] = print, orders: int = 1, scored_dir: Path | None = None,
                  workers: int = 1) -> list[Run]:
    """One run per source, in the order of ``sources``. With ``scored_dir`` each finished run is
    saved there and a saved run of the same model, questions and settings is reused; with
    ``workers`` > 1 that many models are scored at a time in their own processes."""
    if orders > 1:
        permutations.check_orders(items, orders)
    runs: dict[int, Run] = {}
    paths: dict[int, Path | None] = {}
    questions = questions_sha(list(items)) if scored_dir else ""  # once: the same questions for every model
    for i, src in enumerate(sources):
        paths[i] = _scored_path(scored_dir, src, scoring_key(src, questions, batch_size, orders)) if scored_dir else None
        saved = load_scored_run(paths[i], src) if paths[i] is not None and paths[i].is_file() else None
        if saved is not None:
            log(f"reusing the scores of {saved.label} ({paths[i]})")
            runs[i] = saved
    todo = [i for i in range(len(sources)) if i not in runs]
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (multiprocessing.cpu_count() or 1) // workers)
        log(f"scoring {len(todo)} models, {workers} at a time on {threads} thread(s) each")
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {i: pool.submit(_score_and_save, sources[i], list(items), batch_size, orders, paths[i],
                                      threads) for i in todo}
            for i, future in futures.items():
                runs[i] = future.result()
    else:
        for i in todo:
            runs[i] = _score_and_save(sources[i], items, batch_size, orders, paths[i], log=log)
    return [runs[i] for i in range(len(sources))]


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every source of ``cfg`` on the selected questions and write all outputs."""
    if not (cfg.checkpoints or cfg.references or cfg.zero_shot or cfg.predictions):
        raise ConfigError("nothing to evaluate: pass --checkpoints, --references, --zero_shot or --predictions")
    sources = sources_from_config(cfg)  # reads only the checkpoints' configs: a wrong folder says so first
    items = load_dataset(cfg)
    saved_runs = [run for p in cfg.predictions for run in load_prediction_runs(p)]
    train_ids = frozenset().union(*(s.train_ids for s in sources)) if sources else frozenset()
    held_out = held_out_ids(sources)
    selected = select_items(items, cfg.tiers, train_ids, held_out, cfg.max_per_tier)
    for run in saved_runs:  # re-reported runs restrict the set to what they scored
        selected = [it for it in selected if it.id in run.predictions]
    if not selected:
        raise UserError("no question left to evaluate after removing training questions; check "
                          "--tiers and the checkpoints' split.json")
    left_out = left_out_counts(items, selected, cfg.tiers, train_ids, held_out)
    log(report.scored_line(len(selected), len(items), left_out))
    permutations.check_orders(selected, cfg.permutations)
    # Inputs checked, nothing scored yet: an evaluation with other settings in --output is not replaced
    # silently (its scored/ cache would be mixed in too).
    recover(Path(cfg.output) / EVAL_JOURNAL)  # a killed write of the outputs: the previous set back first
    refuse_other_run(cfg, Path(cfg.output) / "eval_config.yaml", cfg.output, "--output", cfg.force,
                     ignore=NOT_RESULTS)
    runs = score_sources(sources, selected, cfg.batch_size, log, cfg.permutations,
                         scored_dir=Path(cfg.output) / SCORED, workers=cfg.workers) + saved_runs
    results = summarize(selected, runs, tiers=cfg.tiers, baseline=cfg.baseline, boot=cfg.bootstrap,
                        exact_below=cfg.exact_below, held_out=held_out is not None)
    default_file = policy(cfg.layout).data_file
    results["dataset_path"] = cfg.data or (f"{default_file} (data dir)" if default_file else cfg.layout)
    results["n_questions_in_file"] = len(items)
    if cfg.tier_titles:
        results["tier_titles"] = dict(pair.partition("=")[::2] for pair in cfg.tier_titles)
    results["n_excluded_trained_on"] = sum(it.id in train_ids for it in items)
    results["left_out"] = left_out
    if cfg.medtok:
        results["collapse"] = collapse.artifact_collapse(_tier_groups(selected, cfg.tiers), cfg.medtok,
                                                         cfg.codes_per_mention)
    results["files"] = write_outputs(results, selected, runs, cfg.output, cfg.plots, config=cfg)
    return results
