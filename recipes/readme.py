"""``python -m recipes.readme``: regenerate the README's result summaries from the published result files.

Each headline result has one page under ``docs/`` (written by its own command) and one short table in
the README, generated here from the same result file so no figure is ever retyped;
``tests/test_readme.py`` fails when the README's tables differ from what this writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from commons.io import read_json, replace_marked_block

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def meddx_summary(root: Path) -> str:
    """Mean accuracy over seeds on all test questions and the difference from ``none`` with its
    interval, one line per method group (a null: the page has the tables)."""
    res = read_json(root / "docs/results/meddx_cpu/results.json")
    diffs = {(d["method"], d["tier"]): d for d in res.get("seed_bootstrap", [])}
    floor = res["dataset"]["All"]["majority_letter"]
    cells = []
    for method, stats in res["methods"].items():
        d = diffs.get((method, "All"))
        vs = f" ({100 * d['difference']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}])" if d else ""
        cells.append(f"`{method}` {_pct(stats['tiers']['All']['mean'])}{vs}")
    clear = [m for (m, tier), d in diffs.items() if tier == "All" and (d["ci_low"] > 0 or d["ci_high"] < 0)]
    above = [m for m, s in res["methods"].items() if s["tiers"]["All"]["mean"] > floor["accuracy"]]
    verdict = (f"{len(clear)} method(s) differ from `none` with an interval excluding 0 ({', '.join(clear) or '-'}); "
               f"{len(above)} of {len(res['methods'])} score above the majority letter")
    return (f"**MedDDx, complete CPU experiment** (n = {res['dataset']['All']['n']} test questions; "
            f"[page](docs/results/meddx_cpu.md)): {verdict}. Accuracy on all tiers, % (vs `none`, points, 95 % CI): "
            + "; ".join(cells) + f"; *majority letter ({floor['letter']})* {_pct(floor['accuracy'])}."
            + ("" if (res.get("provenance") or {}).get("commit") else
               " Scored with bf16 letter logits, before they were computed in float32 (the page says what that changes)."))


def kgqa_summary(root: Path) -> str:
    """Accuracy per test condition (mean over seeds, file order), debiased accuracy over every option
    order, and the difference from ``none``; the oracle channel checks and the two-epoch `medtok-cosine` run beside it."""
    res = read_json(root / "docs/results/kgqa_cpu/results.json")
    titles, diffs = res.get("tier_titles") or {}, {(d["method"], d["tier"]): d for d in res.get("seed_bootstrap", [])}
    tiers = [t for t in ("Basic", "Expert") if t in res["tiers"]]
    rows = ["| method | seeds | " + " | ".join(f"{titles.get(t, t)} (%)" for t in tiers)
            + " | debiased, both (%) | vs `none`, both (points, 95 % CI) |", "|---" * (len(tiers) + 4) + "|"]
    for method, stats in res["methods"].items():
        d = diffs.get((method, "All"))
        vs = f"{100 * d['difference']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" if d else "–"
        debiased = ((stats.get("option_orders") or {}).get("All") or {}).get("debiased")
        rows.append(f"| `{method}` | {stats['n_runs']} | " + " | ".join(_pct(stats["tiers"][t]["mean"]) for t in tiers)
                    + f" | {_pct(debiased)} | {vs} |")
    mdd = res.get("detectable_difference", {}).get("tiers", {}).get(tiers[0])
    scores = []  # the channel check after each published fine-tune budget
    for name, budget in (("kgqa_oracle", "one-epoch"), ("kgqa_oracle_2ep", "two-epoch")):
        file = root / f"docs/results/{name}/results.json"
        if file.is_file():
            o = read_json(file)["methods"]["oracle"]
            scores.append(" / ".join(f"{_pct(o['tiers'][t]['mean'])} %" for t in tiers) + f" after the {budget} fine-tune")
    notes = (" Channel check: a prefix token naming the answer scores " + ", ".join(scores)
              + " ([oracle](docs/kgqa.md#is-the-channel-open)).") if scores else ""
    longer = root / "docs/results/kgqa_cosine_2ep/results.json"
    if longer.is_file():  # the two-epoch run of the method whose signal is most readable
        m = read_json(longer)["methods"]
        seeds = m["medtok-cosine"]["n_runs"]
        notes += (f" Two epochs, {seeds} seed{'s' if seeds > 1 else ''}: `medtok-cosine` "
                  f"{_pct(m['medtok-cosine']['tiers']['All']['mean'])} % vs `none` {_pct(m['none']['tiers']['All']['mean'])} % "
                  "([page](docs/kgqa.md#two-epochs-for-medtok-cosine)).")
    from qa.prefix_methods import method_names

    ran = [m for m in res["methods"] if m in method_names()]
    scope = "" if len(ran) == len(method_names()) else f"{len(ran)} of the {len(method_names())} prefix methods so far; "
    return (f"**Knowledge-grounded QA** (drug indications asked both ways; {scope}{res['dataset']['All']['n']} test "
            f"questions; smallest difference detectable per condition at 80 % power: {100 * mdd:.0f} points; "
            f"[page](docs/kgqa.md)).{notes}\n\n" + "\n".join(rows))


def medtok_quality_summary(root: Path) -> str:
    """Targets met per published MedTok quality run."""
    rows = ["| run | codes | scored on | tasks meeting every target |", "|---|---|---|---|"]
    for name in ("quick", "full"):
        file = root / f"docs/results/medtok_quality_{name}/results.json"
        if not file.is_file():
            continue
        res = read_json(file)
        met = [all(task.values()) for task in res["targets"].values()]
        rows.append(f"| `{name}` | {res['n_codes']:,} | {_quality_protocol(res)} | {sum(met)} of {len(met)} tasks |")
    return ("**MedTok quality** (do the tokens beat their own text on held-out relations? "
            "[page](docs/medtok_quality.md)):\n\n" + "\n".join(rows))


def _quality_protocol(res: dict) -> str:
    """Which held-out part and how many training seeds (runs before the protocol had one part, one seed)."""
    seeds = res.get("train_seeds") or [res.get("seed", 0)]
    part = {"test": "test part (release)", "validation": "validation part"}.get(res.get("split"),
                                                                           "held-out part, before the protocol")
    return f"{part}, {len(seeds)} training seed{'s' if len(seeds) > 1 else ''}"


def linking_summary(root: Path) -> str:
    """Code precision and top-code recall of the linker on the held-out half of the gold standard."""
    res = read_json(root / "docs/linking_quality/after.json")
    rep = res["splits"]["v2-report"]
    rows = ["| split | mentions | mention P | code P (top) | code R@1 (top) |", "|---|---|---|---|---|"]
    for name in ("v2-report", "v2-tune"):
        s = res["splits"][name]["all"]
        rows.append(f"| {name} | {s['gold']} | {_pct(s['mention_precision'])} | {_pct(s['code_precision'])} | "
                    f"{_pct(s['code_recall_at_1'])} |")
    return (f"**Linking quality** (hand-annotated gold, {rep['questions']} held-out questions; %; "
            "[page](docs/linking_quality.md)):\n\n" + "\n".join(rows))


def speed_summary(root: Path) -> str:
    """QA training and scoring utilisation against the same-run matmul peak."""
    res = read_json(root / "benchmarks/results/qa_readme.json")
    return (f"**QA speed** (SmolLM2-135M, {res['dtype']}, {res['threads']} threads, CPU flags "
            f"{', '.join(res['cpu_flags'])}; [page](docs/performance.md)): training at {res['train_mfu']:.2f} and "
            f"scoring at {res['score_mfu']:.2f} of the same-run {res['dtype']} matmul peak; the MedTok prefix "
            f"costs x{res['prefix_overhead_ratio']:.2f} step time.")


EHR_FULL = "docs/results/ehr_synthetic_full"


def ehr_summary(root: Path) -> str:
    """The full EHR preset: does a code embedding beat the learned table (paired, seeds paired), the
    learned table's and gradient boosting's held-out AUPRC per estimable task, and MedFuse's fusion ablation."""
    res = read_json(root / EHR_FULL / "summary.json")
    estimable = [t for t, p in sorted(res["positives"].items()) if p["estimable"]]
    comparisons = [c for c in res["comparisons"] if c["slice"] == "all"]
    above = sum(c["auprc"]["ci95"][0] > 0 for c in comparisons)
    below = sum(c["auprc"]["ci95"][1] < 0 for c in comparisons)
    methods = res["methods"]
    baseline = next((m for m in methods if methods[m]["backbone"] == "none"), None)

    def cell(method: str, task: str) -> dict:
        return methods.get(method, {}).get("tasks", {}).get(task, {}).get("all", {})

    def auprc(method: str, task: str) -> str:
        return f"{cell(method, task)['auprc']['mean']:.3f}" if cell(method, task).get("estimable") else "n/e"

    def scored(task: str) -> str:  # what eval scored (max_per_subject caps it), the same for every method
        c = next(cell(m, task) for m in methods if cell(m, task))
        return f"{c['positives']}/{c['samples']}"

    per_task = "; ".join(f"`{t}` ({scored(t)}) " + " / ".join(
        auprc(f"{b}/learned", t) for b in ("transformer", "mamba")) + (f" vs {auprc(baseline, t)}" if baseline else "")
        for t in estimable)
    fuse = ""
    for task, t in sorted((res.get("medfuse") or {}).get("tasks", {}).items()):
        d = (t.get("auprc_differences") or {}).get("medfuse:mufuse - medfuse:additive")
        if d:
            fuse += f" `{task}` {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}];"
    fuse = f" MedFuse, MuFuse − additive fusion, held-out AUPRC:{fuse.rstrip(';')}." if fuse else ""
    return (f"**EHR models, full synthetic preset** ({res['data']['subjects']:,} clinosim patients, {len(res['seeds'])} seeds; "
            f"numbers measure the software, not medicine; [page]({EHR_FULL}.md)): of {len(comparisons)} paired comparisons "
            f"of a code embedding (MedTok frozen / fine-tuned / tokens, description text) with the learned table on the same "
            f"backbone and seeds, {above} have a held-out AUPRC interval above 0 and {below} below 0. Held-out AUPRC of the "
            f"learned table (transformer / mamba) vs gradient boosting on code counts: {per_task}.{fuse}")


SUMMARIES: dict[str, Callable[[Path], str]] = {
    "summary:kgqa": kgqa_summary,
    "summary:meddx_cpu": meddx_summary,
    "summary:medtok_quality": medtok_quality_summary,
    "summary:linking": linking_summary,
    "summary:speed": speed_summary,
    "summary:ehr": ehr_summary,
}


def write_summaries(readme: Path = README, root: Path = REPO_ROOT) -> None:
    for marker, make in SUMMARIES.items():
        replace_marked_block(readme, marker, make(root))


def main(argv: list[str] | None = None) -> None:
    write_summaries()
    print(f"README summaries regenerated: {', '.join(SUMMARIES)}")


if __name__ == "__main__":
    main()
