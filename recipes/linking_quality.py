"""Quality and speed of disease_linking against the hand-annotated gold standards.

    python -m recipes.linking_quality [--output linking_quality.json] [--errors errors.jsonl] [--full true]

Gold splits (see ``eval/linking_gold.py`` and ``eval/gold/RULES.md``):

- ``v1``: ``eval/gold_linking.jsonl``, the first 113-mention sample (kept for comparability);
- ``v2-tune`` / ``v2-report``: the two seeded halves of ``eval/gold/linking_v2.jsonl``. The
  fallback thresholds (phrases, known concepts) are chosen on *tune* (highest top-code recall
  among the settings whose code precision reaches ``target_precision``, else the most precise),
  the confidence calibration is fitted there (``--fit_calibration true``), and every split is then
  scored with them; quote *report*.

Metrics per split, overall, per kind (disease / drug / phenotype) and per tier (one-to-one greedy
matching of predicted and gold mentions in the same field whose spans overlap):

- mention precision / recall (overlap);
- code precision: predicted mentions whose top-ranked code is acceptable / all predicted mentions
  (an unmatched prediction counts as wrong);
- code recall@1 ("top code"): gold mentions matched by a prediction whose top code is acceptable;
  code recall (any): ... with an acceptable code anywhere in its ranked list.

A code is acceptable if it is one of the gold codes or an ancestor of one down to the ICD-10-CM
3-character category / ATC level 4 (:func:`acceptable`). Per kind, a prediction counts when it
matches a gold mention of that kind, or is unmatched and has that kind itself.

With ``--full`` it also links all of MedDDx and reports coverage per tier and throughput.

With ``--page docs/linking_quality.md`` it writes that page's block ``<!-- linking_quality -->`` from this run's
results and ``--before`` (the ``--output`` of an earlier linker, scored by this same command):
the tables before -> after, coverage, speed and the precision/recall of every confidence threshold
on the report half, so that no figure is retyped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commons.config import parse_config
from commons.datadir import data_file
from commons.errors import UserError, cli_entry
from commons.io import atomic_path, page_link, write_json
from disease_linking.calibration import (
    DEFAULT_PATH,
    Calibrator,
    code_features,
    expected_calibration_error,
    fit,
    reliability,
)
from disease_linking.linker import LinkConfig, Linker
from disease_linking.questions import MCQItem, Mention, load_mcq
from disease_linking.rules import UNSUPPORTED
from disease_linking.summary import format_summary, summarize
from eval.linking_gold import GOLD_V1, GOLD_V2, KINDS, TIERS, load_gold

SPLITS = ("v1", "v2-tune", "v2-report")


@dataclass
class QualityConfig:
    """Precision/recall of mention linking on the gold splits, coverage and throughput on MedDDx."""

    gold_v1: str = str(GOLD_V1)  # hand-annotated gold JSONL, first sample
    gold_v2: str = str(GOLD_V2)  # hand-annotated gold JSONL, second sample (tune/report splits)
    input: str | None = None  # MedDDx file (default: data dir)
    data_dir: str | None = None  # data directory (default: $MEDTOK_DATA_DIR or ../shared/data)
    # Fallback thresholds tried on v2-tune, for phrases and for known concepts (1.01 = no fallback).
    thresholds: list[float] = field(default_factory=lambda: [0.75, 0.8, 0.85, 0.9, 0.95, 1.01])
    # Pick the threshold on v2-tune (else keep --linking.fallback_threshold).
    tune: bool = True
    # The code precision the tuned threshold must reach on v2-tune.
    target_precision: float = 0.90
    # Link all of MedDDx for coverage and throughput.
    full: bool = True
    output: str | None = None  # write the results as JSON here
    # Write every error (spurious mention, wrong top code, missed mention) here as JSONL.
    errors: str | None = None
    # Refit the confidence calibration on v2-tune and save it (else the saved one is used).
    fit_calibration: bool = False
    calibration_out: str = str(DEFAULT_PATH)  # where --fit_calibration saves the calibration
    # Minimum code confidences tried on v2-tune for the precision-first operating point.
    confidences: list[float] = field(default_factory=lambda: [0.7, 0.75, 0.8, 0.85, 0.9])
    # Reliability plot of the calibrated confidence on v2-report (PNG; "" = none).
    plot: str = "runs/linking_quality/reliability.png"
    # Write the block <!-- linking_quality --> into this Markdown page (None = no).
    page: str | None = None
    # Results (--output) of the earlier linker for the page's "before" column ("" = none) ...
    before: str = "docs/linking_quality/before.json"
    # ... and how the page names that linker.
    before_label: str = "the linker before"
    # Confidence thresholds of the precision/recall curve reported on v2-report (not tuned on it).
    curve: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    linking: LinkConfig = field(default_factory=LinkConfig)


def acceptable(codes: list[str]) -> set[str]:
    """The gold codes and their ancestors down to the ICD-10-CM category / ATC level 4."""
    out = set(codes)
    for ref in codes:
        system, _, code = ref.partition(":")
        if system == "ATC":
            out.update(f"ATC:{code[:n]}" for n in (5,) if len(code) > n)
        elif system.startswith("ICD"):
            c = code
            while len(c.replace(".", "")) > 3:
                c = c[:-1].rstrip(".")
                out.add(f"{system}:{c}")
    return out


def _overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def match(pred: list[tuple[str, Mention]], gold: list[dict]) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (pred index, gold index): same question and field, overlapping spans,
    largest overlap first."""
    cands = []
    for i, (qid, m) in enumerate(pred):
        for j, g in enumerate(gold):
            if g["id"] == qid and g["field"] == m.field and _overlap(m.start, m.end, g["start"], g["end"]):
                cands.append((-(min(m.end, g["end"]) - max(m.start, g["start"])), i, j))
    used_p, used_g, pairs = set(), set(), []
    for _, i, j in sorted(cands):
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            pairs.append((i, j))
    return pairs


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


def _ref(c) -> str:
    return f"{c.system}:{c.code}"


def top_code_right(m: Mention, g: dict) -> bool:
    return bool(m.codes) and _ref(m.codes[0]) in acceptable(g["codes"])


def score(items: list[MCQItem], gold: list[dict], kind: str | None = None) -> dict:
    """Metrics over all mentions of ``items``, or for one gold kind (predictions matched to a gold
    mention of that kind, plus unmatched predictions whose own kind is that kind)."""
    pred = [(it.id, m) for it in items for m in it.mentions if m.codes]
    pairs = match(pred, gold)
    if kind is not None:
        matched_pred = {i for i, _ in pairs}
        pairs = [(i, j) for i, j in pairs if gold[j]["kind"] == kind]
        n_pred = len(pairs) + sum(1 for i, (_, m) in enumerate(pred) if i not in matched_pred and m.kind == kind)
        n_gold = sum(g["kind"] == kind for g in gold)
    else:
        n_pred, n_gold = len(pred), len(gold)
    top1 = sum(top_code_right(pred[i][1], gold[j]) for i, j in pairs)
    anyk = sum(any(_ref(c) in acceptable(gold[j]["codes"]) for c in pred[i][1].codes) for i, j in pairs)
    p, r = _ratio(len(pairs), n_pred), _ratio(len(pairs), n_gold)
    return {"gold": n_gold, "predicted": n_pred, "matched": len(pairs), "right": top1,
            "mention_precision": p, "mention_recall": r,
            "code_precision": _ratio(top1, n_pred), "code_recall_at_1": _ratio(top1, n_gold),
            "code_recall": _ratio(anyk, n_gold)}


def score_groups(linked: list[MCQItem], gold: list[dict]) -> dict:
    """``all``, each kind and each tier present."""
    out = {"all": score(linked, gold), **{k: score(linked, gold, k) for k in KINDS}}
    for tier in TIERS:
        items = [it for it in linked if it.tier == tier]
        if items:
            out[tier] = score(items, [g for g in gold if g.get("tier") == tier])
    return out


def errors(linked: list[MCQItem], gold: list[dict], split: str) -> list[dict]:
    """Every spurious mention, wrong top code and missed gold mention, for reading."""
    pred = [(it.id, m) for it in linked for m in it.mentions if m.codes]
    pairs = match(pred, gold)
    out = []
    paired_p = {i: j for i, j in pairs}
    for i, (qid, m) in enumerate(pred):
        j = paired_p.get(i)
        codes = [_ref(c) for c in m.codes]
        if j is None:
            out.append({"split": split, "error": "spurious", "id": qid, "field": m.field, "text": m.text,
                        "kind": m.kind, "codes": codes, "why": [c.why for c in m.codes[:1]]})
        elif not top_code_right(m, gold[j]):
            out.append({"split": split, "error": "wrong_code", "id": qid, "field": m.field, "text": m.text,
                        "gold_text": gold[j]["text"], "kind": gold[j]["kind"], "codes": codes,
                        "gold": gold[j]["codes"], "why": [c.why for c in m.codes[:1]]})
    paired_g = {j for _, j in pairs}
    out += [{"split": split, "error": "missed", "id": g["id"], "field": g["field"], "text": g["text"],
             "kind": g["kind"], "gold": g["codes"]} for j, g in enumerate(gold) if j not in paired_g]
    return out


def error_class(e: dict, linker: Linker) -> str:
    """Coarse class of one :func:`errors` record, for the page: where the wrong or missing code came
    from (the top code's ``why``), or, for a miss, whether the lexicon knows the phrase at all."""
    from disease_linking.pipeline import SPAN_KEY

    if e["error"] == "missed":
        doc = linker.nlp(e["text"])  # kept alive: its spans die with it
        hits = list(doc.spans[SPAN_KEY])
        if any(not linker.lexicon.codes(int(h.kb_id_)) for h in hits):
            return "missed: known concept without a code"
        return "missed: only part of it is a lexicon term" if hits else "missed: no lexicon term"
    why = (e.get("why") or [""])[0]
    if UNSUPPORTED in why:
        source = "KG cross-reference sharing no word with its code"
    elif why.startswith("embedding fallback"):
        source = "embedding fallback"
    elif e["error"] == "wrong_code" and e["text"] != e.get("gold_text"):
        source = "span differs from the gold span"
    else:
        source = "lexicon entry or KG cross-reference"
    return f"{e['error'].replace('_', ' ')}: {source}"


def error_classes(errs: list[dict], split: str, linker: Linker) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in errs:
        if e["split"] == split:
            c = error_class(e, linker)
            counts[c] = counts.get(c, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def top_code_outcomes(linked: list[MCQItem], gold: list[dict]) -> list[tuple[Mention, bool]]:
    """Every predicted mention with codes, and whether its top code is right (an unmatched
    prediction is wrong): the event the calibrated confidence predicts."""
    pred = [(it.id, m) for it in linked for m in it.mentions if m.codes]
    paired = dict(match(pred, gold))
    return [(m, i in paired and top_code_right(m, gold[paired[i]])) for i, (_, m) in enumerate(pred)]


def fit_calibration(linker: Linker, items: list[MCQItem], gold: list[dict], meta: dict) -> Calibrator:
    """Fit the confidence model on the top codes of ``items`` (the tune half)."""
    saved, linker.calibrator = linker.calibrator, None  # raw linker output, nothing dropped
    outcomes = top_code_outcomes(linker.link_items(items), gold)
    linker.calibrator = saved
    x = np.array([code_features(m, m.codes[0]) for m, _ in outcomes])
    y = np.array([float(ok) for _, ok in outcomes])
    return Calibrator(fit(x, y).tolist(), {**meta, "mentions": len(y), "top_code_right": int(y.sum())})


def confidence_curve(linked: list[MCQItem], gold: list[dict], thresholds: list[float]) -> list[dict]:
    """Code precision and top-code recall if mentions whose top code's confidence is below each
    threshold were dropped. Exact for ``--linking.min_confidence``: lower codes are capped at the top
    code's confidence, so a mention loses all its codes exactly when its top code is below."""
    outcomes = top_code_outcomes(linked, gold)
    out = []
    for t in thresholds:
        kept = [ok for m, ok in outcomes if m.codes[0].confidence is None or m.codes[0].confidence >= t]
        out.append({"min_confidence": t, "predicted": len(kept), "right": sum(kept),
                    "code_precision": _ratio(sum(kept), len(kept)), "code_recall_at_1": _ratio(sum(kept), len(gold))})
    return out


def reliability_of(linked: list[MCQItem], gold: list[dict]) -> dict:
    outcomes = top_code_outcomes(linked, gold)
    table = reliability([m.codes[0].confidence for m, _ in outcomes], [ok for _, ok in outcomes])
    return {"bins": table, "ece": expected_calibration_error(table), "mentions": len(outcomes)}


def plot_reliability(curves: dict[str, dict], path: str, pr: list[dict] | None = None) -> None:
    """Reliability diagram of the calibrated confidence, and (``pr``, a :func:`confidence_curve` of
    the report half) code precision and top-code recall against the confidence threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if pr else 1, figsize=(9, 4.5) if pr else (4.5, 4.5), squeeze=False)
    ax = axes[0][0]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for (name, rel), style in zip(curves.items(), ("o-", "s--"), strict=False):
        b = rel["bins"]
        ax.plot([r["confidence"] for r in b], [r["accuracy"] for r in b], style,
                label=f"{name} (n={rel['mentions']}, ECE {rel['ece']:.3f})")
        for r in b:
            ax.annotate(str(r["n"]), (r["confidence"], r["accuracy"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="calibrated confidence of the top code (bin mean)",
           ylabel="share of mentions whose top code is right", title="Linking: reliability")
    ax.legend(loc="upper left", fontsize=7)
    if pr:
        ax2 = axes[0][1]
        ts = [r["min_confidence"] for r in pr]
        ax2.plot(ts, [r["code_precision"] for r in pr], "o-", label="code precision (top code)")
        ax2.plot(ts, [r["code_recall_at_1"] for r in pr], "s--", label="code recall@1 (top code)")
        ax2.axhline(0.9, color="grey", linestyle=":", linewidth=0.8)
        ax2.axhline(0.8, color="grey", linestyle=":", linewidth=0.8)
        ax2.set(xlim=(min(ts) - 0.02, max(ts) + 0.02), ylim=(0, 1.02), xlabel="min_confidence (codes below dropped)",
                title="v2-report (held out): threshold")
        ax2.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def precision_first(linker: Linker, splits: dict, by_id: dict, base: LinkConfig, cfg: QualityConfig) -> dict:
    """The smallest ``min_confidence`` (from ``cfg.confidences``) whose code precision on v2-tune
    reaches ``cfg.target_precision``, and every split scored with it: the operating point for a
    consumer that prefers no code to a wrong one."""
    def scores(c: float, name: str) -> dict:
        linker.cfg = dataclasses.replace(base, min_confidence=c)
        qids, gold = splits[name]
        return score(linker.link_items([by_id[q] for q in qids]), gold)

    sweep = {c: scores(c, "v2-tune") for c in cfg.confidences}
    ok = [c for c in cfg.confidences if sweep[c]["code_precision"] >= cfg.target_precision]
    chosen = min(ok) if ok else max(cfg.confidences, key=lambda c: sweep[c]["code_precision"])
    out = {"min_confidence": chosen, "sweep_v2_tune": {str(c): v for c, v in sweep.items()},
           "splits": {name: scores(chosen, name) for name in splits}}
    print(f"precision-first operating point (min_confidence {chosen}, chosen on v2-tune):")
    for name, sc in out["splits"].items():
        print(_row(f"  {name}", sc))
    return out


def load_splits(cfg: QualityConfig) -> dict[str, tuple[list[str], list[dict]]]:
    """Split name -> (question ids, gold mention records)."""
    h1, g1 = load_gold(cfg.gold_v1)
    h2, g2 = load_gold(cfg.gold_v2)
    out = {"v1": (h1["questions"], g1)}
    for half in ("tune", "report"):
        ids = set(h2[half])
        out[f"v2-{half}"] = (h2[half], [g for g in g2 if g["id"] in ids])
    return out


def _row(name: str, s: dict) -> str:
    return (f"{name:<16}{s['gold']:>5}{s['predicted']:>6}{s['mention_precision']:>8.1%}{s['mention_recall']:>8.1%}"
            f"{s['code_precision']:>8.1%}{s['code_recall_at_1']:>8.1%}{s['code_recall']:>8.1%}")


HEADER = f"{'':<16}{'gold':>5}{'pred':>6}{'men P':>8}{'men R':>8}{'code P':>8}{'R@1':>8}{'R any':>8}"


def format_table(split: str, groups: dict) -> str:
    return "\n".join([f"{split}  ({HEADER.strip()})", *(_row(f"  {k}", s) for k, s in groups.items())])


def _right(s: dict) -> int:
    return s["right"] if "right" in s else round(s["code_recall_at_1"] * s["gold"])


def marginal_precision(s: dict, base: dict) -> float:
    """Share of right top codes among the predictions ``s`` adds over ``base`` (1.0 if it adds none)."""
    added = s["predicted"] - base["predicted"]
    return (_right(s) - _right(base)) / added if added > 0 else 1.0


def tune_thresholds(linker: Linker, items: list[MCQItem], gold: list[dict], base: LinkConfig,
                    thresholds: list[float], target: float) -> tuple[dict, dict]:
    """The (fallback_threshold, known_fallback_threshold) pair from ``thresholds`` x ``thresholds``
    with the highest top-code recall among those reaching ``target`` code precision on ``gold``
    (else the most precise); ties go to the higher, more conservative thresholds. The mentions a
    setting adds over the most conservative one (both thresholds at their highest) must reach
    ``target`` too (:func:`marginal_precision`): a setting that adds 10 codes of which 7 are right
    passes the overall target on the slack of the lexicon's precision, but those codes are not
    codes a clinician would trust. Returns the chosen pair as LinkConfig fields, and the sweep."""
    sweep = {}
    for th in thresholds:
        for known in thresholds:
            linker.cfg = dataclasses.replace(base, fallback_threshold=th, known_fallback_threshold=known)
            sweep[(th, known)] = score(linker.link_items(items), gold)
    base_key = (max(thresholds), max(thresholds))
    ok = [k for k in sweep if sweep[k]["code_precision"] >= target
          and marginal_precision(sweep[k], sweep[base_key]) >= target]
    if ok:
        best = max(ok, key=lambda k: (sweep[k]["code_recall_at_1"], sweep[k]["code_precision"], k))
    else:
        best = max(sweep, key=lambda k: (sweep[k]["code_precision"], sweep[k]["code_recall_at_1"], k))
    chosen = {"fallback_threshold": best[0], "known_fallback_threshold": best[1]}
    return chosen, {f"{th}/{known}": v for (th, known), v in sweep.items()}


def run(cfg: QualityConfig) -> dict:
    splits = load_splits(cfg)
    input_path = Path(cfg.input) if cfg.input else data_file("meddx/MedDDx.json", cfg.data_dir)
    all_items, _ = load_mcq(input_path, skip_invalid=True)  # unscoreable questions (e.g. repeated options) are no gold
    by_id = {it.id: it for it in all_items}
    for name, (qids, _) in splits.items():
        missing = [q for q in qids if q not in by_id]
        if missing:
            raise UserError(f"{name}: gold question {missing[0]} is not in {input_path}; "
                              "pass the MedDDx file it was annotated on")
    t0 = time.perf_counter()
    linker = Linker.from_cache(cfg.linking, cfg.data_dir)
    result: dict = {"load_s": round(time.perf_counter() - t0, 2)}
    link_cfg = cfg.linking
    if cfg.tune:
        qids, gold = splits["v2-tune"]
        chosen, sweep = tune_thresholds(linker, [by_id[q] for q in qids], gold, cfg.linking, cfg.thresholds,
                                        cfg.target_precision)
        result["tuning"] = {"split": "v2-tune", "target_precision": cfg.target_precision, "chosen": chosen,
                            "sweep": sweep}
        link_cfg = dataclasses.replace(cfg.linking, **chosen)
        s_best = sweep[f"{chosen['fallback_threshold']}/{chosen['known_fallback_threshold']}"]
        print(f"tuned on v2-tune: {chosen} (code P {s_best['code_precision']:.1%}, R@1 "
              f"{s_best['code_recall_at_1']:.1%}; {len(sweep)} settings tried)")
    linker.cfg = link_cfg
    if cfg.fit_calibration:
        qids, gold = splits["v2-tune"]
        linker.calibrator = fit_calibration(linker, [by_id[q] for q in qids], gold, {
            "fit_on": "eval/gold/linking_v2.jsonl tune half", "fallback_threshold": link_cfg.fallback_threshold,
            "known_fallback_threshold": link_cfg.known_fallback_threshold})
        linker.calibrator.save(cfg.calibration_out)
        print(f"calibration fitted on v2-tune ({linker.calibrator.meta['mentions']} mentions) -> {cfg.calibration_out}")
    result["splits"], errs, curves = {}, [], {}
    for name, (qids, gold) in splits.items():
        linked = linker.link_items([by_id[q] for q in qids])
        result["splits"][name] = {"questions": len(qids), "mentions": len(gold), **score_groups(linked, gold)}
        print(format_table(f"{name}: {len(qids)} questions, {len(gold)} mentions",
                           {k: v for k, v in result["splits"][name].items() if isinstance(v, dict)}))
        errs += errors(linked, gold, name)
        if linker.calibrator is not None and name.startswith("v2"):
            curves[name] = result["splits"][name]["reliability"] = reliability_of(linked, gold)
            result["splits"][name]["confidence_curve"] = confidence_curve(linked, gold, cfg.curve)
    for name, rel in curves.items():
        print(f"reliability {name}: ECE {rel['ece']:.3f}; " + ", ".join(
            f"[{r['lo']:.1f},{r['hi']:.1f}) n={r['n']} conf {r['confidence']:.2f} acc {r['accuracy']:.2f}"
            for r in rel["bins"]))
    if curves and cfg.plot:
        plot_reliability({"v2-report (held out)": curves["v2-report"], "v2-tune (fitted on)": curves["v2-tune"]},
                         cfg.plot, result["splits"]["v2-report"].get("confidence_curve"))
        print(f"reliability plot: {cfg.plot}")
    for name in ("v2-tune", "v2-report"):
        result["splits"][name]["error_classes"] = error_classes(errs, name, linker)
    if linker.calibrator is not None and cfg.tune:
        result["operating_point"] = precision_first(linker, splits, by_id, link_cfg, cfg)
    linker.cfg = link_cfg
    if cfg.errors:
        with atomic_path(cfg.errors) as tmp:
            tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errs), encoding="utf-8")
    if cfg.full:
        t0 = time.perf_counter()
        linked = linker.link_items(all_items)
        secs = time.perf_counter() - t0
        result["coverage"] = summarize(linked)
        result["throughput"] = {"questions": len(all_items), "seconds": round(secs, 2),
                                "questions_per_s": round(len(all_items) / secs, 1)}
        print(format_summary(result["coverage"]))
        print(f"throughput: {len(all_items)} questions in {secs:.1f} s ({len(all_items) / secs:.0f}/s), "
              f"load {result['load_s']} s")
    if cfg.output:
        write_json(cfg.output, result)
    if cfg.page:
        from commons.io import read_json, replace_marked_block

        before = read_json(cfg.before) if cfg.before and Path(cfg.before).is_file() else None
        replace_marked_block(cfg.page, "linking_quality", page_block(result, before, cfg))
        print(f"block linking_quality written to {cfg.page}")
    return result


_COLUMNS = (("mention P", "mention_precision"), ("mention R", "mention_recall"),
            ("code P (top)", "code_precision"), ("code R@1 (top)", "code_recall_at_1"))
_GROUPS = ("all", *KINDS, *TIERS)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _change(after: dict, before: dict | None, key: str) -> str:
    now = f"**{_pct(after[key])}**"
    return f"{_pct(before[key])} -> {now}" if before and key in before else now


def split_table(after: dict, before: dict | None) -> str:
    """Markdown table of one split, every group, before -> after."""
    rows = ["| group | gold | " + " | ".join(c for c, _ in _COLUMNS) + " |", "|---" * (2 + len(_COLUMNS)) + "|"]
    for g in _GROUPS:
        if g not in after:
            continue
        b = before.get(g) if before else None
        rows.append(f"| {g} | {after[g]['gold']} | " + " | ".join(_change(after[g], b, k) for _, k in _COLUMNS) + " |")
    return "\n".join(rows)


def coverage_table(after: dict, before: dict | None) -> str:
    rows = ["| group | questions | stem | stem + options |", "|---|---|---|---|"]
    for g, s in after.items():
        if isinstance(s, dict) and s.get("questions"):
            b = before.get(g) if before else None
            rows.append(f"| {g} | {s['questions']} | {_change(s, b, 'coverage_stem')} | "
                        f"{_change(s, b, 'coverage_stem_options')} |")
    return "\n".join(rows)


def curve_table(curve: list[dict]) -> str:
    rows = ["| min confidence | " + " | ".join(f"{r['min_confidence']:g}" for r in curve) + " |",
            "|---" * (1 + len(curve)) + "|",
            "| code P (top) | " + " | ".join(_pct(r["code_precision"]) for r in curve) + " |",
            "| code R@1 (top) | " + " | ".join(_pct(r["code_recall_at_1"]) for r in curve) + " |",
            "| mentions kept | " + " | ".join(str(r["predicted"]) for r in curve) + " |"]
    return "\n".join(rows)


_SPLIT_TITLES = {"v2-report": "v2 report half ({m} mentions, {q} questions; held out)",
                 "v2-tune": "v2 tune half ({m} mentions, {q} questions; thresholds and calibration fitted here)",
                 "v1": "v1 ({m} mentions, {q} questions)"}


def page_block(result: dict, before: dict | None, cfg: QualityConfig) -> str:
    """The page's linking block: every figure comes from ``result`` and ``before``."""
    if before:
        head = (f"Figures in %, before -> **after**; before is `{cfg.before}`, {cfg.before_label}, scored by "
                "the same command.")
    else:
        head = "Figures in %."
    parts = [f"Generated by `python -m recipes.linking_quality --page docs/linking_quality.md`. {head}"]
    for name in ("v2-report", "v2-tune", "v1"):
        sp = result["splits"].get(name)
        if sp is None:
            continue
        title = _SPLIT_TITLES[name].format(m=sp["mentions"], q=sp["questions"])
        b = before["splits"].get(name) if before else None
        parts += [f"**{title}**:", split_table(sp, b)]
    if "tuning" in result:
        parts.append(f"Thresholds chosen on v2-tune: `{result['tuning']['chosen']}`.")
    if "coverage" in result:
        b = before.get("coverage") if before else None
        parts += ["**Coverage of MedDDx** (share of questions with at least one code):",
                  coverage_table(result["coverage"], b)]
    if "throughput" in result:
        t = result["throughput"]
        bt = f" (before: {before['throughput']['seconds']} s)" if before and "throughput" in before else ""
        parts.append(f"**Speed**: all {t['questions']} MedDDx questions linked in {t['seconds']} s{bt}, after "
                     f"{result['load_s']} s loading the cached lexicon and code index.")
    rep = result["splits"].get("v2-report", {})
    if "confidence_curve" in rep and "reliability" in result["splits"].get("v2-tune", {}):
        ece = {n: result["splits"][n]["reliability"]["ece"] for n in ("v2-report", "v2-tune")}
        parts += ["**Confidence threshold on the report half** (`--linking.min_confidence`; reported here, "
                  f"never tuned on it; expected calibration error {ece['v2-report']:.3f} on report, "
                  f"{ece['v2-tune']:.3f} on tune):", curve_table(rep["confidence_curve"])]
    if "operating_point" in result:
        op = result["operating_point"]
        r = op["splits"]["v2-report"]
        parts.append(f"Precision-first point chosen on v2-tune: min confidence {op['min_confidence']}, on the "
                     f"report half code P {_pct(r['code_precision'])} %, R@1 {_pct(r['code_recall_at_1'])} %.")
    classes = {n: result["splits"].get(n, {}).get("error_classes") for n in ("v2-tune", "v2-report")}
    if all(classes.values()):
        names = sorted(set(classes["v2-tune"]) | set(classes["v2-report"]),
                       key=lambda c: (-classes["v2-report"].get(c, 0), c))
        rows = ["| error class | v2-tune | v2-report |", "|---|---|---|"]
        rows += [f"| {c} | {classes['v2-tune'].get(c, 0)} | {classes['v2-report'].get(c, 0)} |" for c in names]
        parts += ["**Errors left** (default operating point; class from the top code's `why`, or for a miss "
                  "whether the lexicon knows the phrase):", "\n".join(rows)]
    if cfg.plot:
        link = page_link(cfg.page, cfg.plot) if cfg.page else cfg.plot
        parts.append(f"![reliability of the calibrated confidence, and P/R against the threshold]({link})")
    return "\n\n".join(parts)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    run(parse_config(QualityConfig, argv, prog="python -m recipes.linking_quality"))


if __name__ == "__main__":
    main()
