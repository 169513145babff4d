"""Human-readable outputs of an evaluation: ``report.md`` and the PNG plots.

Both read only the ``results`` dict of :func:`eval.evaluate.summarize`, so a report can be
re-rendered from ``results.json`` without any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from commons.io import atomic_path, write_text
from qa.prefix_methods import get_method, method_names
from qa.reference import GROUP_TITLE, REFERENCES, reference_names

ALL = "All"  # the row over every tier
ZERO_SHOT = "zero-shot"  # the base model without fine-tuning (not a prefix method)
TEST_NAMES = {"exact-binomial": "exact", "chi2-continuity-corrected": "χ² cc"}


# ------------------------------------------------------------------------ methods (from the registry)
_ZERO_SHOT_COLOR = "#9e9e9e"
_UNREGISTERED_COLORS = ["#f0e442", "#000000", "#8c564b", "#17becf"]


def _registered(method: str) -> bool:
    return method in method_names()


def is_reference(method: str) -> bool:
    """An embeddings-only reference (qa/reference.py): no LLM, reported in its own group."""
    return method in REFERENCES


def method_rank(method: str) -> tuple[int, str]:
    """Report order: zero-shot first, then registered methods by their ``order``, then the
    references (no LLM), then the rest."""
    if method == ZERO_SHOT:
        return (-1, "")
    if _registered(method):
        return (get_method(method).order, method)
    if is_reference(method):
        return (10**5 + reference_names().index(method), method)
    return (10**6, method)


def method_label(method: str) -> str:
    return (get_method(method).label or method) if _registered(method) else method


def method_color(method: str, methods: Sequence[str]) -> str:
    if method == ZERO_SHOT:
        return _ZERO_SHOT_COLOR
    if _registered(method):
        return get_method(method).color
    if is_reference(method):
        return REFERENCES[method].color
    others = [m for m in methods if m != ZERO_SHOT and not _registered(m) and not is_reference(m)]
    return _UNREGISTERED_COLORS[others.index(method) % len(_UNREGISTERED_COLORS)]


# ------------------------------------------------------------------------------------ formatting
def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


SMALL_N = 30  # below this many questions a tier's interval is flagged as a small sample


def small_tiers(results: dict) -> dict[str, int]:
    """Tiers evaluated on fewer than SMALL_N questions (title -> n)."""
    return {_tier_title(results, t): results["dataset"][t]["n"] for t in results["tiers"]
            if 0 < results["dataset"][t]["n"] < SMALL_N}


def small_sample_warning(results: dict) -> str | None:
    """One line warning that some intervals rest on fewer than SMALL_N questions (None when none do)."""
    small = small_tiers(results)
    if not small:
        return None
    tiers = ", ".join(f"{t} n={n}" for t, n in small.items())
    return (f"warning: small samples ({tiers}): with fewer than {SMALL_N} questions an accuracy and its "
            "interval say little (at n = 1 the interval is [0, 0] or [100, 100]); score more questions "
            "before reading a difference")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def scored_line(n: int, total: int, left: dict[str, int]) -> str:
    """What was scored of the question file and, counted by reason, what was left out."""
    line = f"scored {n} of {total} questions"
    if left:
        line += f"; left out {sum(left.values())}: " + "; ".join(f"{c} because {r}" for r, c in left.items())
    return line


def _tier_title(results: dict, tier: str) -> str:
    if tier in results.get("tier_titles", {}):
        return results["tier_titles"][tier]
    if tier == "Intermediate" and results.get("held_out_intermediate"):
        return "Intermediate held-out"
    return tier


def _methods(results: dict) -> list[str]:
    return sorted(results["methods"], key=method_rank)


def _runs_of(results: dict, method: str) -> list[dict]:
    return [r for r in results["runs"] if r["method"] == method]


def accuracy_cell(results: dict, method: str, tier: str) -> str:
    """One seed: accuracy [95% CI]; several: mean ± sd (k seeds, min–max)."""
    runs = _runs_of(results, method)
    if len(runs) == 1:
        t = runs[0]["tiers"][tier]
        if t["accuracy"] is None:
            return "—"
        return f"{pct(t['accuracy'])} [{pct(t['ci_low'])}, {pct(t['ci_high'])}]"
    s = results["methods"][method]["tiers"][tier]
    if s["mean"] is None:
        return "—"
    return f"{pct(s['mean'])} ± {pct(s['std'])} ({s['n']} seeds, {pct(s['min'])}–{pct(s['max'])})"


def _p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


# --------------------------------------------------------------------------------------- markdown
def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _accuracy_section(results: dict) -> list[str]:
    tiers = results["tiers"]
    ds = results["dataset"]
    header = ["Method", *(f"{_tier_title(results, t)} (n={ds[t]['n']})" for t in tiers)]
    rows, in_reference_group = [], False
    for m in _methods(results):
        if is_reference(m) and not in_reference_group:  # the references follow the LLM methods, headed
            rows.append([f"*{GROUP_TITLE}:*", *("" for _ in tiers)])
            in_reference_group = True
        rows.append([f"**{method_label(m)}**", *(accuracy_cell(results, m, t) for t in tiers)])
    rows.append(["*majority-letter baseline*",
                 *(f"{pct(ds[t]['majority_letter']['accuracy'])} ({ds[t]['majority_letter']['letter'] or '—'})"
                   for t in tiers)])
    rows.append(["*chance*", *(pct(ds[t]["chance"]) for t in tiers)])
    conf = int(round(100 * results["bootstrap"]["confidence_level"]))
    return ["## Accuracy by tier (%)", "",
            f"One seed: accuracy [{conf}% percentile-bootstrap CI, {results['bootstrap']['n_resamples']} "
            f"resamples, seed {results['bootstrap']['seed']}]. Several seeds: mean ± sd over seeds "
            "(min–max). The majority-letter baseline always answers the most frequent answer letter of "
            "the tier: what letter bias alone scores.", "",
            *_table(header, rows), ""]


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _floor_finding(results: dict) -> str | None:
    """Where the LoRA-only baseline stands against the majority letter on all tiers together: above
    (every seed's interval lies above it), below (every seed's interval lies below it), or neither."""
    base, ds = results["baseline"], results["dataset"][ALL]
    runs = [r for r in _runs_of(results, base) if r["tiers"][ALL]["accuracy"] is not None]
    if not runs:
        return None
    majority = ds["majority_letter"]["accuracy"]
    mean = sum(r["tiers"][ALL]["accuracy"] for r in runs) / len(runs)
    seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
    head = (f"- **Floor**: `{base}` scores {pct(mean)} % on all tiers together ({seeds}) against "
            f"{pct(majority)} % for always answering the most frequent letter and {pct(ds['chance'])} % chance: ")
    if all(r["tiers"][ALL]["ci_low"] > majority for r in runs):
        return head + "above the floor (every seed's 95 % interval lies above the majority letter)."
    where = ("significantly **below** the majority letter (every seed's 95 % interval lies under it)"
             if all(r["tiers"][ALL]["ci_high"] < majority for r in runs)
             else "**not above the floor** (a seed's 95 % interval includes the majority letter)")
    return (head + where + ", so a prefix method has no fine-tuned skill to improve on; read the differences "
            "below with that in mind.")


def _tier_difference(results: dict, tier: str, alpha: float) -> str | None:
    """One tier: the methods that differ from the baseline after Holm's adjustment over the
    methods, or the largest difference when none does."""
    rows = [r for r in results.get("seed_bootstrap") or []
            if r["tier"] == tier and r["difference"] is not None and not is_reference(r["method"])]
    if not rows:
        return None
    adjusted = holm_adjusted([r["p_value"] for r in rows])

    def cell(r: dict, p: float) -> str:
        return (f"`{r['method']}` {100 * r['difference']:+.1f} points [{100 * r['ci_low']:+.1f}, "
                f"{100 * r['ci_high']:+.1f}], Holm-adjusted {_p_text(p)}")

    where = "all tiers together" if tier == ALL else _tier_title(results, tier)
    significant = [(r, p) for r, p in zip(rows, adjusted, strict=True) if p < alpha]
    if not significant:
        largest = max(zip(rows, adjusted, strict=True), key=lambda rp: abs(rp[0]["difference"]))
        return f"{where}: no significant difference; the largest is {cell(*largest)}"
    return f"{where}: significant for " + "; ".join(cell(r, p) for r, p in significant)


def _difference_finding(results: dict, alpha: float = 0.05) -> str | None:
    """Every method against the baseline, on all tiers together and tier by tier; Holm-adjusted
    over the methods within each row."""
    lines = [x for x in (_tier_difference(results, t, alpha) for t in results["tiers"]) if x]
    if not lines:
        return None
    n = len({r["method"] for r in results.get("seed_bootstrap") or [] if not is_reference(r["method"])})
    return (f"- **Methods vs `{results['baseline']}`** (paired bootstrap over questions and seeds, Holm-adjusted "
            f"over the {n} methods compared, α = {alpha}):\n" + "\n".join(f"  - {x}." for x in lines))


def _reference_finding(results: dict) -> str | None:
    refs = [m for m in _methods(results) if is_reference(m) and results["methods"][m]["tiers"][ALL]["mean"] is not None]
    if not refs:
        return None
    ds = results["dataset"][ALL]
    return ("- **Embeddings only (no LLM)**: " + ", ".join(
        f"`{m}` {pct(results['methods'][m]['tiers'][ALL]['mean'])} %" for m in refs)
        + f" on all tiers together (majority letter {pct(ds['majority_letter']['accuracy'])} %): what the "
        "code vectors alone carry.")


def findings(results: dict) -> list[str]:
    """What the numbers show, in sentences generated from the results (never typed by hand)."""
    lines = [x for x in (_floor_finding(results), _difference_finding(results), _reference_finding(results)) if x]
    return ["## What the numbers show", "", *lines, ""] if lines else []


def _comparison_section(results: dict) -> list[str]:
    comps = results["comparisons"]
    base = results["baseline"]
    if not comps:
        return ["## Comparison with the baseline", "",
                f"No comparison: the baseline method `{base}` was not evaluated.", ""]
    tiers = results["tiers"]
    rows = []
    keys = sorted({(c["method"], c["seed"]) for c in comps},
                  key=lambda k: (method_rank(k[0]), -1 if k[1] is None else k[1]))
    for method, seed in keys:
        cells = []
        for tier in tiers:
            c = next(x for x in comps if x["method"] == method and x["seed"] == seed and x["tier"] == tier)
            if c["n"] == 0:
                cells.append("—")
                continue
            diff = (c["c"] - c["b"]) / c["n"]
            cells.append(f"{diff * 100:+.1f} pts (b={c['b']}, c={c['c']}, {_p_text(c['p_value'])} "
                         f"{TEST_NAMES.get(c['test'], c['test'])})")
        seed_text = "—" if seed is None else str(seed)
        base_seed = next(x["baseline_seed"] for x in comps if x["method"] == method and x["seed"] == seed)
        rows.append([f"**{method_label(method)}**", seed_text, "—" if base_seed is None else str(base_seed), *cells])
    header = ["Method", "seed", f"`{base}` seed", *(_tier_title(results, t) for t in tiers)]
    return [f"## Paired comparison with `{base}` (McNemar)", "",
            f"Same questions, same seed where available. b = questions `{base}` answers correctly and "
            f"the method does not, c = the reverse; the difference is the method's accuracy minus "
            f"`{base}`'s. Exact binomial test when b + c is small, else χ² with continuity correction "
            "(cc). p-values are per comparison, not corrected for multiple testing.", "",
            *_table(header, rows), ""]


def _seed_bootstrap_section(results: dict) -> list[str]:
    rows_in = results.get("seed_bootstrap") or []
    if not rows_in:
        return []
    base = results["baseline"]
    tiers = results["tiers"]
    rows = []
    for method in sorted({r["method"] for r in rows_in}, key=method_rank):
        cells, seeds = [], "—"
        for tier in tiers:
            r = next((x for x in rows_in if x["method"] == method and x["tier"] == tier), None)
            if r is None or r["difference"] is None:
                cells.append("—")
                continue
            seeds = f"{r['n_seeds_a']} / {r['n_seeds_b']}"
            cells.append(f"{100 * r['difference']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] "
                         f"{_p_text(r['p_value'])}")
        rows.append([f"**{method_label(method)}**", seeds, *cells])
    conf = int(round(100 * rows_in[0]["confidence_level"]))
    return [f"## Method − `{base}` over questions and seeds (paired bootstrap)", "",
            f"Difference of seed-averaged accuracies in points, with a {conf}% interval from "
            f"{rows_in[0]['n_resamples']} resamples that draw each method's seeds and the questions "
            "(paired) with replacement: a method whose seeds disagree gets a wide interval. An interval "
            "containing 0 means no difference could be shown. The per-seed McNemar tests are above.", "",
            *_table(["Method", f"seeds (method / `{base}`)", *(_tier_title(results, t) for t in tiers)], rows), ""]


def _orders_section(results: dict) -> list[str]:
    k = results.get("option_orders", 1)
    methods = [m for m in _methods(results) if "option_orders" in results["methods"][m]]
    if k <= 1 or not methods:
        return []
    tiers = [t for t in results["tiers"] if results["dataset"][t]["n"] > 0]
    rows = []
    for m in methods:
        for tier in tiers:
            o = results["methods"][m]["option_orders"][tier]
            rows.append([f"**{method_label(m)}**", _tier_title(results, tier), *(pct(x) for x in o["per_order"]),
                         pct(o["mean"]), pct(o["spread"]), pct(o["debiased"])])
    every_rotation = k >= len(results.get("alphabet") or "ABCD")
    combined = "debiased" if every_rotation else "order-averaged"
    header = ["Method", "Tier", *(f"order {s}" for s in range(k)), "mean", "spread", combined]
    why = ("Debiased: each option's probability averaged over every rotation, then the most probable option "
           "(a letter prior cannot favour any option)." if every_rotation else
           f"Order-averaged: each option's probability averaged over these {k} orders, then the most probable "
           "option; not debiased, since not every rotation was scored (a letter prior can still favour an option).")
    return [f"## Option-order robustness ({k} cyclic orders, %)", "",
            "Order s rotates the options by s (the answer moves with its option). Spread = best − worst "
            f"order. {why} Mean over seeds where a method has several.",
            "", *_table(header, rows), ""]


def _references_section(results: dict) -> list[str]:
    """Coverage of each reference and its accuracy where it is not guessing (first seed)."""
    refs = [m for m in _methods(results) if is_reference(m)]
    if not refs:
        return []
    tiers = results["tiers"]
    rows = []
    for m in refs:
        run = _runs_of(results, m)[0]
        cells = []
        for t in tiers:
            stats_t = run["tiers"][t]
            covered = stats_t.get("accuracy_codes_used") or {}
            cells.append(f"{pct(stats_t['share_with_codes_used'])} ({covered.get('n', 0)}) / "
                         f"{pct(covered.get('accuracy'))}")
        rows.append([f"**{m}**", REFERENCES[m].summary, *cells])
    return ["## References, no LLM: coverage / accuracy where covered (%)", "",
            "A small model that sees only the codes of the stem and of each option (no question text, no "
            "LLM), trained on the same training questions and held-out slice as the fine-tunes. It says "
            "how much of the answer the code vectors alone carry: a prefix method that does not beat it "
            "uses the codes no better than a shallow scorer. Coverage = questions with at least one coded "
            "option (count in brackets); the others get uniform probabilities and a letter drawn from the "
            "question id, so in expectation they score chance in the accuracy table. Accuracy where covered "
            "is on the covered questions only. First seed of each reference.", "",
            *_table(["Reference", "features", *(_tier_title(results, t) for t in tiers)], rows), ""]


def _collapse_section(results: dict) -> list[str]:
    col = results.get("collapse")
    if not col:
        return []
    tiers = [t for t in results["tiers"] if t in col["tiers"]]
    rows = [[_tier_title(results, t), str(c["n"]), str(c["n_two_coded"]), str(c["n_collapsed"]),
             str(c.get("n_collapsed_linked", "—")), pct(c["rate"])] for t in tiers for c in [col["tiers"][t]]]
    return ["## Collapse rate of the MedTok artifact", "",
            f"Artifact `{col['artifact']}`. Of the evaluated questions with at least two coded options, "
            "the share where two options map onto the same artifact code (after the artifact's mapping of "
            "a linked code to what it holds, e.g. its nearest known ancestor; "
            f"{col['codes_per_mention']} code(s) per mention). On those questions the tokens alone cannot "
            "tell (some of) the options apart. \"already in the linking\": collapsed questions whose two "
            "options were linked to the very same code; the rest is the artifact's own mapping.", "",
            *_table(["Tier", "n", "with ≥ 2 coded options", "collapsed", "already in the linking",
                     "collapse rate (%)"], rows), ""]


def _linked_section(results: dict) -> list[str]:
    tiers = results["tiers"]
    ds = results["dataset"]
    lines = ["## Questions with and without linked codes", "",
             *_table(["Tier", "n", "with linked codes", "share"],
                     [[_tier_title(results, t), str(ds[t]["n"]), str(ds[t]["n_linked"]),
                       pct(ds[t]["share_linked"])] for t in tiers]), "",
             "Accuracy (%) on questions with / without linked codes (first seed of each method):", ""]
    rows = []
    for m in _methods(results):
        run = _runs_of(results, m)[0]
        rows.append([f"**{m}**", *(f"{pct(run['tiers'][t]['accuracy_linked']['accuracy'])} / "
                                   f"{pct(run['tiers'][t]['accuracy_unlinked']['accuracy'])}" for t in tiers)])
    lines += _table(["Method", *(_tier_title(results, t) for t in tiers)], rows)
    return lines + [""]


def mean_distribution(results: dict, method: str, tier: str) -> dict[str, float]:
    runs = _runs_of(results, method)
    return {a: sum(r["tiers"][tier]["pred_distribution"][a] for r in runs) / len(runs)
            for a in results["alphabet"]}


def _letter_section(results: dict) -> list[str]:
    alphabet = results["alphabet"]
    lines = ["## Letter bias: predicted letters vs answers (%)", "",
             "A model that learned only the letter prior piles its predictions on the majority letter.", ""]
    for tier in results["tiers"]:
        if results["dataset"][tier]["n"] == 0:
            continue
        rows = [["*answers*", *(pct(results["dataset"][tier]["answer_distribution"][a]) for a in alphabet)]]
        for m in _methods(results):
            dist = mean_distribution(results, m, tier)
            rows.append([f"**{m}**", *(pct(dist[a]) for a in alphabet)])
        lines += [f"**{_tier_title(results, tier)}**", "", *_table(["", *alphabet], rows), ""]
    return lines


def _seeds_section(results: dict) -> list[str]:
    if all(len(_runs_of(results, m)) <= 1 for m in results["methods"]):
        return []
    tiers = results["tiers"]
    rows = [[r["label"], *(f"{pct(r['tiers'][t]['accuracy'])} [{pct(r['tiers'][t]['ci_low'])}, "
                           f"{pct(r['tiers'][t]['ci_high'])}]" for t in tiers)] for r in results["runs"]]
    return ["## Every run", "", *_table(["Run", *(_tier_title(results, t) for t in tiers)], rows), ""]


def render_report(results: dict) -> str:
    ds = results["dataset"]
    notes = [f"- Dataset: `{results.get('dataset_path', '?')}`; {ds[ALL]['n']} questions evaluated"
             + (f" ({results['n_excluded_trained_on']} excluded because a checkpoint trained on them)"
                if results.get("n_excluded_trained_on") else "") + "."]
    if results.get("left_out"):
        notes.append(f"- {_sentence(scored_line(ds[ALL]['n'], results['n_questions_in_file'], results['left_out']))}")
    if (warning := small_sample_warning(results)) is not None:
        notes.append(f"- **{_sentence(warning)}**")
    if results.get("held_out_intermediate"):
        notes.append("- Intermediate = the held-out validation slice of the checkpoints' split.json "
                     "(split by option set), never trained on.")
    notes += _power_note(results) + _provenance_note(results)
    lines = ["# QA evaluation by tier", "", *notes, ""]
    plots = (results.get("files") or {}).get("plots") or {}
    for name, path in plots.items():
        lines += [f"![{name}]({Path(path).name})", ""]
    lines += findings(results) + _accuracy_section(results) + _comparison_section(results)
    lines += _seed_bootstrap_section(results)
    lines += _references_section(results) + _collapse_section(results)
    lines += _orders_section(results) + _linked_section(results)
    lines += _letter_section(results) + _seeds_section(results)
    return "\n".join(lines).rstrip() + "\n"


def _power_note(results: dict) -> list[str]:
    mdd = results.get("detectable_difference")
    if not mdd:
        return []
    parts = [f"{_tier_title(results, t)} (n={results['dataset'][t]['n']}) "
             + ("—" if d is None else f"{100 * d:.1f} points") for t, d in mdd["tiers"].items()]
    return [f"- Minimum detectable difference ({100 * mdd['power']:.0f} % power, α = {mdd['alpha']}, two-sided, "
            f"from {100 * mdd['baseline']:.0f} % accuracy; seeds add no questions): " + "; ".join(parts) + "."]


def _provenance_note(results: dict) -> list[str]:
    prov = results.get("provenance")
    if not prov:
        return []  # results.json written before provenance was recorded
    commit = (prov.get("commit") or "unknown")[:10] + (" (dirty tree)" if prov.get("dirty") else "")
    return [f"- Produced at commit {commit} by `{prov.get('command')}` on {prov['machine'].get('cpu', '?')}; "
            f"seeds {prov.get('seeds')}."]


def write_report(results: dict, path: str | Path) -> Path:
    write_text(path, render_report(results))
    return Path(path)


# ------------------------------------------------------------------------------------------ plots
def _plot_tiers(results: dict) -> list[str]:
    """Tiers with questions; "All" only when the data are untiered (it would repeat the tiers)."""
    tiers = [t for t in results["tiers"] if t != ALL and results["dataset"][t]["n"] > 0]
    return tiers or [ALL]


def plot_accuracy(results: dict, path: Path) -> Path:
    """Dot-and-whisker accuracy per method, one panel per tier, with the letter-bias and chance lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = _plot_tiers(results)
    methods = _methods(results)
    fig, axes = plt.subplots(1, len(tiers), figsize=(4.2 * len(tiers) + 1.2, 0.55 * len(methods) + 2.0),
                             sharey=True, squeeze=False)
    highs = [r["tiers"][t]["ci_high"] or 0 for r in results["runs"] for t in tiers]
    majors = [results["dataset"][t]["majority_letter"]["accuracy"] or 0 for t in tiers]
    x_max = min(105.0, 100 * max(highs + majors + [0.3]) + 16)
    for ax, tier in zip(axes[0], tiers, strict=True):
        ds = results["dataset"][tier]
        for row, method in enumerate(methods):
            y = len(methods) - 1 - row
            runs = _runs_of(results, method)
            color = method_color(method, methods)
            offsets = [0.0] if len(runs) == 1 else [(-0.18 + 0.36 * i / (len(runs) - 1)) for i in range(len(runs))]
            for run, dy in zip(runs, offsets, strict=True):
                t = run["tiers"][tier]
                if t["accuracy"] is None:
                    continue
                acc, lo, hi = (100 * t[k] for k in ("accuracy", "ci_low", "ci_high"))
                ax.errorbar(acc, y + dy, xerr=[[acc - lo], [hi - acc]], fmt="o", color=color,
                            ms=7 if len(runs) == 1 else 4, capsize=3, lw=1.6,
                            alpha=1.0 if len(runs) == 1 else 0.55)
            summary = results["methods"][method]["tiers"][tier]
            if summary["mean"] is not None:
                mean = 100 * summary["mean"]
                if len(runs) > 1:
                    ax.plot(mean, y, marker="D", color=color, ms=9, mec="white", mew=1.2, zorder=5)
                label = f"{mean:.1f}" + (f" ± {100 * summary['std']:.1f}" if len(runs) > 1 else "")
                # Right of the widest whisker, so the label never covers a seed's interval.
                right = max(100 * (r["tiers"][tier]["ci_high"] or 0) for r in runs)
                ax.annotate(label, (right, y), xytext=(5, 0), textcoords="offset points", ha="left",
                            va="center", fontsize=8.5, color=color, fontweight="bold")
        refs = [row for row, m in enumerate(methods) if is_reference(m)]
        if refs:  # a rule between the LLM methods and the references (no LLM) below them
            ax.axhline(len(methods) - 1 - refs[0] + 0.5, color="#999999", ls="-", lw=0.8)
        maj = ds["majority_letter"]
        if maj["accuracy"] is not None:
            # Shade what letter bias alone reaches: a method inside it learned nothing beyond the prior.
            ax.axvspan(0, 100 * maj["accuracy"], color="#c0392b", alpha=0.06, lw=0)
            ax.axvline(100 * maj["accuracy"], color="#c0392b", ls="--", lw=1.3)
            ax.text(100 * maj["accuracy"], len(methods) - 0.45, f" always '{maj['letter']}'\n {pct(maj['accuracy'])}%",
                    color="#c0392b", fontsize=8, va="top")
        if ds["chance"] is not None:
            ax.axvline(100 * ds["chance"], color="#7f8c8d", ls=":", lw=1.2)
            ax.text(100 * ds["chance"], -0.75, f"chance {pct(ds['chance'], 0)}%", color="#7f8c8d",
                    fontsize=8, ha="center", va="bottom")
        ax.set_title(f"{_tier_title(results, tier)}  (n={ds['n']})", fontsize=11, fontweight="bold")
        ax.set_xlim(0, x_max)
        ax.set_ylim(-0.9, len(methods) - 0.3)
        ax.set_xlabel("accuracy (%)")
        ax.grid(axis="x", color="#e5e5e5")
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0][0].set_yticks(range(len(methods)))
    axes[0][0].set_yticklabels([method_label(m) for m in reversed(methods)], fontsize=10)
    for tick, method in zip(axes[0][0].get_yticklabels(), reversed(methods), strict=True):
        tick.set_color(method_color(method, methods))
    conf = int(round(100 * results["bootstrap"]["confidence_level"]))
    n_seeds = max(len(_runs_of(results, m)) for m in methods)
    what = f"dots: runs with {conf}% bootstrap CI" + ("; diamonds: mean over seeds" if n_seeds > 1 else "")
    fig.suptitle(f"MedDDx accuracy by tier ({what}; red: majority-letter baseline)",
                 fontsize=10, color="#333333")
    _save(fig, path)
    return path


def plot_letter_bias(results: dict, path: Path) -> Path:
    """Heatmaps of predicted-letter shares per method next to the answer distribution, per tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tiers = _plot_tiers(results)
    methods = _methods(results)
    alphabet = results["alphabet"]
    rows = ["answers", *methods]
    fig, axes = plt.subplots(1, len(tiers), figsize=(0.75 * len(alphabet) * len(tiers) + 2.4 * len(tiers),
                                                      0.42 * len(rows) + 1.6), squeeze=False)
    for ax, tier in zip(axes[0], tiers, strict=True):
        answer = results["dataset"][tier]["answer_distribution"]
        grid = np.array([[answer[a] for a in alphabet]]
                        + [[mean_distribution(results, m, tier)[a] for a in alphabet] for m in methods])
        ax.imshow(100 * grid, cmap="Blues", vmin=0, vmax=100 * max(0.5, grid.max()), aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = 100 * grid[i, j]
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8.5,
                        color="white" if v > 55 * max(0.5, grid.max()) else "#222222")
        ax.axhline(0.5, color="white", lw=3)
        ax.set_xticks(range(len(alphabet)))
        ax.set_xticklabels(list(alphabet))
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows if ax is axes[0][0] else [""] * len(rows))
        ax.set_title(f"{_tier_title(results, tier)}", fontsize=10, fontweight="bold")
        ax.tick_params(length=0)
    fig.suptitle("Letter bias: % of predictions per letter (top row: % of answers)", fontsize=10)
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def write_plots(results: dict, out_dir: str | Path) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"accuracy_by_tier": str(plot_accuracy(results, out / "accuracy_by_tier.png")),
            "letter_bias": str(plot_letter_bias(results, out / "letter_bias.png"))}


def results_markdown_table(results: dict[str, Any]) -> str:
    """The accuracy table alone (for printing at the end of a run), with the small-sample warning."""
    warning = small_sample_warning(results)
    table = "\n".join(_accuracy_section(results)[4:]).strip()
    return table + (f"\n{warning}" if warning else "")
