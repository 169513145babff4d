"""The EHR pipeline's outputs from ``ehr eval``'s metrics.json: mean and spread across seeds, the report,
the AUPRC plot, the model card, the machine's facts, and (with ``publish``/``page``) the published copy.

    summary.json   per method (backbone/code embedding, or the baseline) x task x slice: every seed's
                   AUROC/AUPRC/F1 and patient-bootstrap interval, their mean, sd, min and max
    report.md      the same as tables (n/e: not estimable, too few positives or negatives)
    auprc.png      AUPRC per task per method: bar = mean over seeds, line = mean bootstrap interval,
                   dots = seeds, dashed = the positive rate (what a random ranking scores)
    README.md      model card: what was trained on what data (and its licence), what it is not for
    medfuse        (stage ``medfuse`` enabled) summary.json's ``medfuse``: per task each fusion's and baseline's
                   AUPRC/AUROC/accuracy with intervals, or why not estimable; a MedFuse section in report.md
                   and the page; ``publish`` copies medfuse/results.json and results.md
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from commons.io import docs_root, page_link, read_json, write_json, write_text
from ehr.evaluate import SYNTHETIC_NOTE, comparisons_markdown
from ehr.medfuse.run import ablation_tables

METRICS = ("auprc", "auroc", "f1")
BASELINE = "hist_gradient_boosting (code counts + age)"
PUBLISHED = ("summary.json", "report.md", "auprc.png", "machine.json", "timings.json", "README.md",
             "eval/metrics.json", "data/positives.json", "data/mapping_report.json")
MEDFUSE_PUBLISHED = ("results.json", "results.md")  # <output>/medfuse/ -> <publish>/medfuse/


def aggregate(per_seed: list[dict]) -> dict:
    """One method x task x slice over its seeds (estimability depends on the labels alone: same for all)."""
    first = per_seed[0]
    out = {"samples": first["samples"], "positives": first["positives"], "estimable": bool(first.get("estimable")),
           "seeds": len(per_seed)}
    if not out["estimable"]:
        return {**out, "why_not": first.get("why_not", "")}
    for m in METRICS:
        values = np.array([s[m] for s in per_seed])
        lows, highs = [s["ci95"][m][0] for s in per_seed], [s["ci95"][m][1] for s in per_seed]
        out[m] = {"per_seed": [round(float(v), 4) for v in values], "mean": round(float(values.mean()), 4),
                  "sd": round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0,
                  "min": round(float(values.min()), 4), "max": round(float(values.max()), 4),
                  "ci95_mean": [round(float(np.nanmean(lows)), 4), round(float(np.nanmean(highs)), 4)]}
    return out


def summarize(metrics: dict, finetuned: dict, seeds: list[int]) -> dict:
    """metrics.json's per-run results -> per method (seeds pooled)."""
    by_name = {f"{r.backbone}/{r.variant} ({Path(p).name})": r for r, p in finetuned.items()}
    groups: dict[str, dict] = {}
    for name, tasks in metrics["results"].items():
        if name in by_name:
            r = by_name[name]
            method, info = f"{r.backbone}/{r.variant}", {"backbone": r.backbone, "code_embedding": r.variant}
            seed = r.seed
        else:  # the baseline: one deterministic fit (no subsampling), scored once
            method, info, seed = name, {"backbone": "none", "code_embedding": "code counts + age"}, None
        g = groups.setdefault(method, {**info, "seeds": [], "per_seed": []})
        g["seeds"].append(seed)
        g["per_seed"].append(tasks)
    out = {}
    for method, g in groups.items():
        tasks = sorted(g["per_seed"][0])
        slices = sorted(g["per_seed"][0][tasks[0]]) if tasks else []
        out[method] = {"backbone": g["backbone"], "code_embedding": g["code_embedding"],
                       "seeds": [s for s in g["seeds"] if s is not None],
                       "tasks": {t: {sl: aggregate([p[t][sl] for p in g["per_seed"]]) for sl in slices} for t in tasks}}
    return out


def stage_breakdown(timings: dict) -> str:
    """Seconds per stage group, e.g. 'data 4 s, medtok 792 s, pretrain 120 s, finetune 290 s, eval 67 s'."""
    groups: dict[str, float] = {}
    for name, t in timings["stages"].items():
        group = name.split(" ", 1)[0]
        groups[group] = groups.get(group, 0.0) + t["seconds"]
    return ", ".join(f"{g} {s:.0f} s" for g, s in groups.items())


def _cell(m: dict, key: str) -> str:
    if not m["estimable"]:
        return "n/e"
    v = m[key]
    spread = f" ± {v['sd']:.3f}" if m["seeds"] > 1 else ""
    return f"{v['mean']:.3f}{spread} [{v['ci95_mean'][0]:.3f}, {v['ci95_mean'][1]:.3f}]"


def tables(summary: dict) -> list[str]:
    """Markdown tables: per slice and metric, methods x tasks."""
    methods = summary["methods"]
    if not methods:
        return ["No method was evaluated."]
    first = next(iter(methods.values()))
    tasks = sorted(first["tasks"])
    slices = sorted(next(iter(first["tasks"].values())).keys(), key=lambda s: s != "all") if tasks else []
    estimable = [t for t in tasks if first["tasks"][t]["all"]["estimable"]]
    lines = []
    for sl in slices:
        title = "All held-out samples" if sl == "all" else f"Rare/unseen-code slice ({sl}: a code seen < k times in training)"
        for metric in METRICS:
            lines += [f"### {title}: {metric.upper()}", "",
                      "| method | seeds | " + " | ".join(f"{t} (pos/n)" for t in estimable) + " |",
                      "|---|---|" + "---|" * len(estimable)]
            for method, g in methods.items():
                cells = []
                for t in estimable:
                    m = g["tasks"][t][sl]
                    cells.append(f"{_cell(m, metric)} ({m['positives']}/{m['samples']})")
                lines.append(f"| {method} | {len(g['seeds']) or 1} | " + " | ".join(cells) + " |")
            lines.append("")
    not_est = [t for t in tasks if t not in estimable]
    if not_est:
        lines += ["Not estimable on this cohort (fewer than the minimum positives or negatives in held_out; no "
                  "AUROC/AUPRC is printed): " + ", ".join(
                      f"{t} ({first['tasks'][t]['all']['positives']}/{first['tasks'][t]['all']['samples']})"
                      for t in not_est) + ".", ""]
    return lines


def medfuse_summary(results: dict) -> dict:
    """MedFuse's results.json without its per-sample arrays: per task, each method's AUPRC/AUROC/accuracy
    (mean over seeds, seed sd, 95% patient-bootstrap interval) and seconds, and the paired AUPRC differences;
    or why the task is not estimable."""
    tasks = {}
    for task, r in results["tasks"].items():
        if not r["estimable"]:
            tasks[task] = {"estimable": False, "why_not": r["why_not"]}
            continue
        tasks[task] = {"estimable": True, "test_samples": r["test_samples"], "test_positives": r["test_positives"],
                       "methods": {m: {k: v for k, v in d.items() if k != "held_out_probs_by_seed"}
                                   for m, d in r["methods"].items()},
                       "auprc_differences": r["auprc_differences"]}
    return {"results": "medfuse/results.json", "synthetic_note": results["synthetic_note"],
            "meds_dir": results["meds_dir"], "seeds": results["seeds"], "model": results["model"],
            "train": results["train"], "positives": results["positives"], "tasks": tasks}


def medfuse_section(summary: dict, results_link: str) -> list[str]:
    """The fusion-ablation tables (ehr.medfuse.run.ablation_tables), under a heading of their own."""
    if not summary.get("medfuse"):
        return []
    m = summary["medfuse"]
    return ["## MedFuse: fusion ablation and baselines", "",
            f"MedFuse on (feature, value, time) triplets of the same MEDS folder (`{m['meds_dir']}`): "
            "`medfuse:<fusion>` = MedFuse with that fusion (mufuse, additive, concat), `gru` = a GRU over the "
            "triplets, `hgb` = gradient boosting on per-window aggregates. Cells: "
            f"mean over seeds {m['seeds']} [95% bootstrap interval over patients] (seed sd); full results "
            f"[medfuse/results.md]({results_link}).", "", *ablation_tables(m, "###")]


def lab_tokens_sentence(data: dict) -> str:
    """How lab results entered the sequences (data.value_bins; older summaries lack it)."""
    lab = data.get("value_bins")
    if not lab:
        return "Lab results: their code token alone (no value bins)."
    return (f"Lab results: code plus the value's quantile bin (`<code>//Q<k>`, {lab['bins']} bins per code fitted on "
            f"the training split): {lab['binned_events']}/{lab['numeric_events']} numeric events binned, "
            f"{lab['codes_with_bins']} codes with bins, {lab['codes_plain_too_few_training_values']} kept plain "
            "(too few training values).")


def report_markdown(summary: dict) -> str:
    t = summary["timings"]
    lines = ["# EHR pipeline report", "", f"**{SYNTHETIC_NOTE}**", "",
             f"Data: {summary['data']['meds_dir']} ({summary['data'].get('subjects', '?')} patients, {summary['data']['sequences']} sequences). Backbones: "
             "`mamba` = EhrMamba (Mamba, mambapy parallel scan), `transformer` = the LLaMA-shaped baseline. "
             f"Cells: mean ± sd over seeds {summary['seeds']} [mean of the seeds' 95% patient-bootstrap "
             f"intervals, {summary['eval']['n_boot']} resamples] (positives/samples). The gradient-boosting "
             "baseline is one deterministic fit.", "", lab_tokens_sentence(summary["data"]), ""]
    if summary["medtok"]["left_out"]:
        lines += [f"MedTok variants left out ({', '.join(summary['medtok']['left_out'])}): no MedTok artifact.", ""]
    elif summary["medtok"]["artifact"]:
        lines += [f"MedTok artifact: {summary['medtok']['artifact']}.", ""]
    lines += tables(summary) + comparison_lines(summary)
    lines += ["![AUPRC per task and method](auprc.png)", ""]
    lines += medfuse_section(summary, "medfuse/results.md")
    lines += [f"Stage time: {t['total_stage_seconds']:.0f} s in all ({stage_breakdown(t)}; {t['ran_seconds']:.0f} s "
              f"run in this call, the rest reused from earlier calls); machine: {summary['machine']['cpu']}, "
              f"{summary['machine']['cpus']} CPUs, load average {summary['machine']['load_average_1_5_15']}.", ""]
    return "\n".join(lines)


def comparison_lines(summary: dict) -> list[str]:
    """Does a code embedding beat the learned table? The eval's paired differences (seeds paired)."""
    text = comparisons_markdown(summary.get("comparisons", []), summary["eval"]["n_boot"])
    return text.splitlines() + [""] if text else []


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary["methods"]
    first = next(iter(methods.values()))
    tasks = [t for t in sorted(first["tasks"]) if first["tasks"][t]["all"]["estimable"]]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.5 * max(len(tasks), 1), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        names = list(methods)
        for i, name in enumerate(names):
            m = methods[name]["tasks"][task]["all"]
            a = m["auprc"]
            ax.bar(i, a["mean"], color="#bbbbbb" if name == BASELINE else "#4c78a8")
            ax.plot([i, i], a["ci95_mean"], color="black", lw=1.5)
            ax.scatter([i] * len(a["per_seed"]), a["per_seed"], color="#e45756", s=12, zorder=3)
        rate = first["tasks"][task]["all"]["positives"] / max(first["tasks"][task]["all"]["samples"], 1)
        ax.axhline(rate, ls="--", color="gray", lw=1)
        ax.set_title(f"{task} (held_out {first['tasks'][task]['all']['positives']}/"
                     f"{first['tasks'][task]['all']['samples']})", fontsize=9)
        ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], rotation=90, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("AUPRC")
    if not tasks:
        axes[0][0].text(0.5, 0.5, "no estimable task", ha="center")
    fig.suptitle("AUPRC (bar: mean over seeds; line: bootstrap 95% interval; dots: seeds; dashed: positive rate)\n"
                 "synthetic cohort: measures the software, not medicine", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_card(summary: dict) -> str:
    d = summary["data"]
    return "\n".join([
        "# Model card: EhrMamba / transformer EHR models of the EHR pipeline", "",
        f"**{SYNTHETIC_NOTE}** These models are software checks, not clinical models: never use them for care.", "",
        "## Models",
        f"- Backbones: `mamba` (EhrMamba: transformers' MambaModel, mambapy parallel scan) and `transformer` "
        f"(LLaMA-shaped baseline); hidden {summary['model']['hidden']}, {summary['model']['layers']} layers.",
        f"- Code embeddings: {', '.join(sorted({m['code_embedding'] for m in summary['methods'].values()}))}.",
        "- Training: next-token pretraining on the training split's timelines, then multitask prompted "
        "finetuning (task token first and last, one binary head for every task); seeds "
        f"{summary['seeds']}.",
        f"- MedTok artifact: {summary['medtok']['artifact'] or 'none (MedTok variants left out)'}.",
        *medfuse_card_line(summary), "",
        "## Data", f"- MEDS folder: `{d['meds_dir']}` ({d['sequences']} sequences after preparation).",
        f"- {lab_tokens_sentence(d)}",
        "- Source: clinosim (PyPI `clinosim` 0.6.5, **MIT licence**), a physiology-driven hospital simulator; "
        "**entirely synthetic**: no real patient is in it. The committed fixture "
        "`tests/fixtures/ehr_clinosim_meds` was generated by the command in its README.md "
        "(`clinosim simulate -p 300 -s 1 --end 2026-12-01 --format fhir-r4`, converted by `medtok-qa ehr convert`).",
        "- On MIMIC-IV in MEDS the data licence is PhysioNet's credentialed-access licence and data use "
        "agreement: models trained on it must not be shared beyond it.", "",
        "## Evaluation",
        "- Held-out split; AUROC, AUPRC (primary under imbalance), F1 at the tuning split's best-F1 threshold; "
        "95% intervals over patient-bootstrap resamples; the rare/unseen-code slice.",
        "- Tasks with too few held-out positives or negatives are not estimable and get no number.",
        "- Results: report.md, summary.json, auprc.png beside this card.", "",
        "## Limitations",
        "- A small synthetic cohort with few positives: the intervals are wide and differences between variants "
        "are mostly not resolved; the demo sizes (steps, width) are far below the paper's.",
        "- Synthetic comorbidity structure is simpler than real care; nothing here transfers to patients.", ""])


def medfuse_card_line(summary: dict) -> list[str]:
    if not summary.get("medfuse"):
        return []
    trained = sorted({m for t in summary["medfuse"]["tasks"].values() if t["estimable"] for m in t["methods"]})
    return [f"- MedFuse (stage `medfuse`): {', '.join(trained) or 'nothing trained (no estimable task)'}; "
            "trained per estimable task and seed for the ablation, scored on held_out, not saved."]


def commit_line(summary: dict) -> str:
    """Where the published numbers came from (summaries written before they recorded it say so)."""
    prov = summary.get("provenance") or {}
    if not prov.get("commit"):
        return "Produced before EHR results recorded their commit: the preset may have changed since."
    dirty = " with uncommitted changes" if prov.get("dirty") else ""
    return f"Produced at commit {prov['commit'][:7]}{dirty} by `{prov.get('command', '')}`."


def load_line(machine: dict) -> str:
    """How busy the machine was: stage times on a shared machine are not free-core times."""
    load = machine.get("load_average_1_5_15")
    return "load average at the end " + ", ".join(f"{x:.1f}" for x in load) if load else "load not recorded"


def page_markdown(summary: dict, page: Path, published: Path) -> str:
    link = lambda name: page_link(page, published / name)  # noqa: E731
    lines = ["# EHR models on the synthetic (clinosim) cohort", "",
             f"**{SYNTHETIC_NOTE}** Tasks with too few positives are not estimable and get no number.", "",
             f"Generated by `medtok-qa ehr pipeline --config {summary['config_file'] or '...'}` from "
             f"[summary.json]({link('summary.json')}); full report [report.md]({link('report.md')}), "
             f"model card [README.md]({link('README.md')}), machine [machine.json]({link('machine.json')}), "
             f"stage times [timings.json]({link('timings.json')}). {commit_line(summary)}", "",
             f"Wall time of the call: {summary['timings']['this_call_wall_seconds']:.0f} s; its stages add up to "
             f"{summary['timings']['total_stage_seconds']:.0f} s ({stage_breakdown(summary['timings'])}) "
             f"on {summary['machine']['cpu']} ({summary['machine']['cpus']} CPUs, {load_line(summary['machine'])}; "
             f"{summary['machine']['training_threads']} torch thread(s) per training, "
             f"{summary['timings'].get('workers', 1)} training(s) at a time).", ""]
    speed = docs_root(page) / "docs" / "ehr.md"
    if speed.is_file():  # the speed/memory benchmark's figures are described beside the EHR docs
        lines += [f"Pretraining throughput and memory vs sequence length (Mamba vs transformer): "
                  f"[ehr.md, Speed and memory]({page_link(page, speed)}#speed-and-memory-python-benchmarksbench_ehrpy-benchmarksresultsehrjson).", ""]
    if summary["medtok"]["artifact"]:
        lines += [f"MedTok artifact: `{summary['medtok']['artifact']}` (trained by the preset's MedTok stage when "
                  "no artifact was given or found).", ""]
    lines += tables(summary) + comparison_lines(summary)
    lines += [f"![AUPRC per task and method]({link('auprc.png')})", ""]
    lines += medfuse_section(summary, link("medfuse/results.md"))
    return "\n".join(lines)


def write_outputs(cfg, out: Path, data: Path, evaluation: Path, finetuned: dict, timings: dict,
                  medtok: str | None, left_out: list[str], wall: float, config_file: str = "",
                  medfuse: Path | None = None) -> dict:
    import pandas as pd

    from commons.config import to_dict
    from commons.machine import machine_facts
    from eval.provenance import provenance

    metrics = read_json(evaluation / "metrics.json")
    samples = pd.read_parquet(data / "samples.parquet", columns=["kind", "subject_id"])
    machine = {**machine_facts(), "training_threads": cfg.finetune.threads,
               "note": "load average and torch_threads at report time; trainings ran on training_threads"}
    total = sum(t["seconds"] for t in timings.values())
    summary = {
        "note": SYNTHETIC_NOTE, "config_file": config_file,
        "data": {"meds_dir": cfg.data.meds_dir,
                 "sequences": len(samples), "subjects": int(samples["subject_id"].nunique()),
                 "value_bins": ({"bins": cfg.data.value_bins, **read_json(data / "value_bins.json")["report"]}
                                if cfg.data.value_bins else None)},
        "seeds": list(cfg.seeds), "runs": cfg.runs, "model": to_dict(cfg.model), "eval": to_dict(cfg.eval),
        "medtok": {"artifact": medtok or "", "left_out": left_out},
        "positives": read_json(data / "positives.json"),
        "methods": summarize(metrics, finetuned, list(cfg.seeds)),
        "comparisons": metrics.get("comparisons", []),
        "timings": {"stages": timings, "total_stage_seconds": round(total, 1),
                    "ran_seconds": round(sum(t["seconds"] for t in timings.values() if not t["reused"]), 1),
                    "this_call_wall_seconds": round(wall, 1), "workers": cfg.workers},
        "machine": machine,
        "provenance": provenance(list(cfg.seeds)),  # commit (and dirty tree), command
    }
    if medfuse is not None:
        summary["medfuse"] = medfuse_summary(read_json(medfuse / "results.json"))
    write_json(out / "summary.json", summary)
    write_json(out / "machine.json", machine)
    write_json(out / "timings.json", summary["timings"])
    write_text(out / "report.md", report_markdown(summary))
    write_text(out / "README.md", model_card(summary))
    plot(summary, out / "auprc.png")
    if cfg.publish:
        publish(out, Path(cfg.publish), medfuse is not None)
    if cfg.page:
        write_text(cfg.page, page_markdown(summary, Path(cfg.page), Path(cfg.publish)))
    return summary


def publish(out: Path, dest: Path, medfuse: bool = False) -> None:
    """Copy the generated files (only those; MedFuse's when its stage ran) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        src = out / name
        if src.is_file():
            target = dest / Path(name).name if "/" not in name else dest / name.replace("/", "_")
            shutil.copyfile(src, target)
    for name in MEDFUSE_PUBLISHED if medfuse else ():
        (dest / "medfuse").mkdir(exist_ok=True)
        shutil.copyfile(out / "medfuse" / name, dest / "medfuse" / name)
