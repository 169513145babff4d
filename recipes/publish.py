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

import json
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


def publish(cfg: PublishConfig) -> Path:
    from commons.fileset import replace_together
    from commons.runlock import run_lock

    src = Path(cfg.eval_dir)
    dest = Path(cfg.target) / checked_name(cfg.name)
    results, report_md, timings, plots = _read_eval_folder(src)
    results, timings = relative_paths(results), relative_paths(timings)
    if src.resolve() == dest.resolve():
        # Republishing a published folder (after a change to the report or the page): the machine
        # that ran it is the one its machine.json names, and the report is rendered anew from results.json.
        machine = read_json(src / "machine.json")
        report_md = render_report(results)
    else:
        machine = {**machine_facts(), "command": cfg.command, "dtype": _dtype_used(src)}
    page = results_page(cfg)
    # the page's block, made first: odd results fail before anything is written
    block = page_block(results, machine, timings, dest, page) if page is not None else None
    texts = {dest / "report.md": relative_paths(report_md)}
    if timings is not None:
        texts[dest / "timings.json"] = json.dumps(timings, indent=2, default=str) + "\n"
    texts[dest / "machine.json"] = json.dumps(machine, indent=2, default=str) + "\n"
    texts[dest / "results.json"] = json.dumps(results, indent=2, default=str) + "\n"  # last: marks the copy whole
    copies = {dest / png.name: png for png in plots}
    with run_lock(dest, "medtok-qa publish"):
        with replace_together([*copies, *texts], dest / ".publish.txn.json") as tmp:
            for target, png in copies.items():
                shutil.copyfile(png, tmp[target])
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


def page_block(results: dict, machine: dict, timings: dict | None, dest: Path, page: Path) -> str:
    link = Path(os.path.relpath(dest, page.parent)).as_posix()  # links work from the page's folder
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
            f"([report]({link}/report.md)); command `{machine['command']}` on {machine['cpus']} x "
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
