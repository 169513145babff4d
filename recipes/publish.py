"""``python -m recipes.publish``: commit-ready copy of an evaluation, and its table on its results page.

    python -m recipes.publish --eval_dir runs/pipeline/eval --name demo --command "make demo"

Copies ``results.json``, ``report.md`` and the plots of an evaluation folder (plus the pipeline's
``timings.json`` when it sits beside it) into ``docs/results/<name>/`` with every path inside
made relative to the repository, writes ``machine.json`` (CPU, flags, dtype, load, the command),
and replaces the block ``<!-- results:<name> -->`` of ``docs/results/<name>.md`` with the accuracy
table generated from that results.json: published figures are never retyped (the README's summary
of them is generated too: ``python -m recipes.readme``).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commons.config import parse_config
from commons.errors import ConfigError, cli_entry
from commons.io import read_json, replace_marked_block
from commons.machine import machine_facts
from commons.tracking import read_jsonl
from eval.provenance import git_state
from eval.report import findings, render_report, results_markdown_table

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PublishConfig:
    """Publish an evaluation folder under docs/results/<name>/ and its table on its results page."""

    eval_dir: str = "runs/pipeline/eval"  # output folder of recipes.evaluate (or of the pipeline's eval stage)
    name: str = "demo"  # docs/results/<name>/ and the page marker results:<name>
    command: str = "make demo"  # the exact command that produced the evaluation (shown beside the table)
    target: str = "docs/results"  # folder the published evaluations go under
    # Markdown page whose block results:<name> is regenerated: "" = <target>/<name>.md, "none" = no page
    page: str = ""


def relative_paths(value: Any, root: Path = REPO_ROOT) -> Any:
    """Every string holding an absolute path under the repository, made relative to it."""
    prefix = str(root) + "/"
    if isinstance(value, dict):
        return {k: relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(prefix, "")
    return value


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def checked_name(name: str) -> str:
    """``--name`` becomes a folder under ``--target``: one plain folder name, nothing that climbs out."""
    if not NAME_PATTERN.fullmatch(name or "") or ".." in name:
        raise ConfigError(f"--name {name!r} must be one folder name (letters, digits, '.', '_', '-'; no '/', no "
                          "'..'), e.g. --name demo")
    return name


def _read_eval_folder(src: Path) -> tuple[dict, str, dict | None, list[Path]]:
    """results.json, report.md, the pipeline's timings.json and the plots of ``src``, all read and
    checked before anything is written (a bad folder leaves the published one as it was)."""
    if not (src / "results.json").is_file():
        raise ConfigError(f"{src} holds no results.json; pass the output folder of recipes.evaluate as --eval_dir")

    def read(path: Path, what: str) -> Any:
        try:
            return read_json(path) if path.suffix == ".json" else path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{src} holds no {path.name} ({what}); rerun recipes.evaluate into it") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not readable {what} ({err}); rerun recipes.evaluate into {src}") from None

    results = read(src / "results.json", "results")
    if not isinstance(results, dict) or "tiers" not in results:
        raise ConfigError(f"{src / 'results.json'} is not an evaluation's results (no 'tiers'); pass the output "
                          "folder of recipes.evaluate as --eval_dir")
    report_md = read(src / "report.md", "report")
    # the pipeline's, beside the eval folder; a published folder holds its own copy
    timings_file = next((f for f in (src.parent / "timings.json", src / "timings.json") if f.is_file()), src / "-")
    timings = read(timings_file, "timings") if timings_file.is_file() else None
    return results, report_md, timings, sorted(src.glob("*.png"))


PREDICTIONS = "predictions.jsonl.gz"  # every scored question of every run, every option order
TRAINING_LOG = "training_log.jsonl.gz"  # every run's metrics.jsonl records, tagged with method and seed
TRAINING_CURVES = "training_curves.png"


def _gzip_jsonl(records: list[dict]) -> bytes:
    """Deterministic gzip (no file name or time in the header): republishing the same records
    gives the same bytes."""
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    return gzip.compress(text.encode("utf-8"), mtime=0)


def prediction_records(src: Path) -> list[dict]:
    """The evaluation's predictions/<method>.jsonl files, one record per (run, question), paths
    made relative to the repository."""
    rows: list[dict] = []
    for path in sorted((src / "predictions").glob("*.jsonl")):
        rows += [relative_paths(r) for r in read_jsonl(path)]
    return rows


def training_records(results: dict) -> list[dict]:
    """The metrics.jsonl of every fine-tuned run the results name (the folder above its ``best``
    checkpoint), each record tagged with the run's method and seed; runs whose folder is gone
    (or references, which log no steps) are left out."""
    rows: list[dict] = []
    for run in results.get("runs", []):
        source = Path(str(run.get("source", "")))
        log = next((f for f in (source.parent / "metrics.jsonl", source / "metrics.jsonl") if f.is_file()), None)
        if log is not None:
            rows += [{"method": run["method"], "seed": run.get("seed"), **r} for r in read_jsonl(log)]
    return rows


def plot_training(rows: list[dict], path: Path) -> None:
    """Training loss per logged step and validation NLL per epoch, one line per method (mean over
    its seeds): did anything learn?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.report import method_color

    methods = sorted({r["method"] for r in rows}, key=method_rank_key)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, (event, key, title) in zip(axes, [("train", "loss", "training loss (next-token CE, mean of each logged window)"),
                                              ("eval", "val_nll", "validation NLL over the option letters")], strict=True):
        for method in methods:
            by_step: dict[int, list[float]] = {}
            for r in rows:
                if r["method"] == method and r.get("event") == event and r.get(key) is not None:
                    by_step.setdefault(int(r["step"]), []).append(float(r[key]))
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [sum(by_step[x]) / len(by_step[x]) for x in steps], label=method,
                        color=method_color(method, methods), marker="o" if len(steps) < 5 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[1].axhline(math.log(4), color="grey", ls=":", label="ln 4 (uniform over 4 options)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


def method_rank_key(method: str):
    from eval.report import method_rank

    return (method_rank(method), method)


def publish(cfg: PublishConfig) -> Path:
    from commons.fileset import replace_together
    from commons.runlock import run_lock

    src = Path(cfg.eval_dir)
    dest = Path(cfg.target) / checked_name(cfg.name)
    results, report_md, timings, plots = _read_eval_folder(src)
    results, timings = relative_paths(results), relative_paths(timings)
    in_place = src.resolve() == dest.resolve()
    if in_place:
        # Republishing a published folder (after a change to the report or the page): the machine
        # that ran it is the one its machine.json names, and the report is rendered anew from results.json.
        machine = read_json(src / "machine.json")
        report_md = render_report(results)
    else:
        machine = {**machine_facts(), "command": cfg.command, "dtype": _dtype_used(src)}
    page = results_page(cfg)
    # republishing in place keeps the prediction and training files already there
    predictions = [] if in_place else prediction_records(src)
    training = [] if in_place else training_records(results)
    blobs = {dest / name: _gzip_jsonl(rows) for name, rows in ((PREDICTIONS, predictions), (TRAINING_LOG, training))
             if rows}
    curves = [dest / TRAINING_CURVES] if training else []
    extras = [n for n in (PREDICTIONS, TRAINING_LOG, TRAINING_CURVES)
              if dest / n in blobs or dest / n in curves or (in_place and (dest / n).is_file())]
    # the page's block, made first: odd results fail before anything is written
    block = page_block(results, machine, timings, dest, page, extras) if page is not None else None
    texts = {dest / "report.md": relative_paths(report_md)}
    if timings is not None:
        texts[dest / "timings.json"] = json.dumps(timings, indent=2, default=str) + "\n"
    texts[dest / "machine.json"] = json.dumps(machine, indent=2, default=str) + "\n"
    texts[dest / "results.json"] = json.dumps(results, indent=2, default=str) + "\n"  # last: marks the copy whole
    copies = {dest / png.name: png for png in plots if png.name != TRAINING_CURVES}
    with run_lock(dest, "medtok-qa publish"):
        with replace_together([*copies, *blobs, *curves, *texts], dest / ".publish.txn.json") as tmp:
            for target, png in copies.items():
                shutil.copyfile(png, tmp[target])
            for target, blob in blobs.items():
                tmp[target].write_bytes(blob)
            if curves:
                plot_training(training, tmp[curves[0]])
            for target, text in texts.items():
                tmp[target].write_text(text, encoding="utf-8")
        if page is not None:
            replace_marked_block(page, f"results:{cfg.name}", block)
    return dest


def results_page(cfg: PublishConfig) -> Path | None:
    """The Markdown page that shows this evaluation (docs/results/<name>.md unless --page says otherwise)."""
    if cfg.page == "none":
        return None
    return Path(cfg.page) if cfg.page else Path(cfg.target) / f"{cfg.name}.md"


def _dtype_used(eval_dir: Path) -> str | None:
    """The dtype the evaluated checkpoints ran in (from their qa_config.json), if one is found."""
    config = next(iter(sorted(eval_dir.parent.glob("qa/*/best/qa_config.json"))), None)
    return read_json(config).get("dtype") if config else None


def commit_note(results: dict) -> str:
    """Where the result's code came from: its commit (results.json provenance), flagged when it is not
    the commit being published from; older results without provenance say so."""
    prov = results.get("provenance")
    if not prov or not prov.get("commit"):
        return " Produced before results recorded their commit."
    made, now = prov["commit"], git_state().get("commit")
    dirty = " with uncommitted changes" if prov.get("dirty") else ""
    if now and now != made:
        return f" Produced at commit {made[:7]}{dirty}, an older commit than this checkout's {now[:7]}."
    return f" Produced at commit {made[:7]}{dirty}."


EXTRA_LABELS = {PREDICTIONS: "per-question predictions", TRAINING_LOG: "training log",
                TRAINING_CURVES: "training curves"}


def page_block(results: dict, machine: dict, timings: dict | None, dest: Path, page: Path,
               extras: list[str] = ()) -> str:
    link = Path(os.path.relpath(dest, page.parent)).as_posix()  # links work from the page's folder
    more = "".join(f", [{EXTRA_LABELS[n]}]({link}/{n})" for n in extras)
    flags = ", ".join(machine["cpu_flags"]) or "no AVX flags read"
    when = ""
    if timings and timings.get("all_runs"):  # every stage of the experiment, over resumed runs too
        totals = timings["all_runs"]
        when = (f", {totals['wall_seconds'] / 3600:.2f} h wall while its stages ran / "
                f"{totals['cpu_seconds'] / 3600:.2f} CPU-h ({timings.get('workers', 1)} stage(s) at a time)")
    elif timings:
        cpu_min = sum(s.get("cpu_seconds", 0) for s in timings["stages"]) / 60
        when = (f", {timings['total_seconds'] / 60:.0f} min wall / {cpu_min:.0f} CPU-min")
    if timings and timings.get("load_average"):
        when += f" (load average at the end {', '.join(f'{x:.1f}' for x in timings['load_average'])})"
    return (f"Generated by `python -m recipes.publish` from [`{link}/results.json`]({link}/results.json) "
            f"([report]({link}/report.md){more}); command `{machine['command']}` on {machine['cpus']} x "
            f"{machine['cpu']} ({flags}; dtype {machine.get('dtype') or 'auto'}){when}.{commit_note(results)}\n\n"
            + "\n".join(findings(results)[2:]).strip() + "\n\n"  # a table right after a list joins its last item
            + results_markdown_table(results)
            + f"\n\n![accuracy by tier]({link}/accuracy_by_tier.png)")


@cli_entry
def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(PublishConfig, argv, prog="python -m recipes.publish")
    dest = publish(cfg)
    print(f"published {cfg.eval_dir} -> {dest}" + (f"; block results:{cfg.name} of {page} updated" if (page := results_page(cfg)) else ""))
    return dest


if __name__ == "__main__":
    main()
