"""``python -m eval.publish``: commit-ready copy of an evaluation, and its table in the README.

    python -m eval.publish --eval_dir runs/pipeline/eval --name demo \\
        --command "make demo" --readme README.md

Copies ``results.json``, ``report.md`` and the plots of an evaluation folder (plus the pipeline's
``timings.json`` when it sits beside it) into ``docs/results/<name>/`` with every path inside
made relative to the repository, writes ``machine.json`` (CPU, flags, dtype, load, the command),
and replaces the README block ``<!-- results:<name> -->`` with the accuracy table generated from
that results.json: README figures are never retyped.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.report import findings, results_markdown_table
from medtok_core.config import parse_config
from medtok_core.errors import ConfigError, cli_entry
from medtok_core.io import read_json, replace_marked_block, write_json, write_text
from medtok_core.machine import machine_facts

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PublishConfig:
    """Publish an evaluation folder under docs/results/<name>/ and its table in the README."""

    eval_dir: str = "runs/pipeline/eval"  # output folder of eval.run (or of the pipeline's eval stage)
    name: str = "demo"  # docs/results/<name>/ and the README marker results:<name>
    command: str = "make demo"  # the exact command that produced the evaluation (shown beside the table)
    target: str = "docs/results"  # folder the published evaluations go under
    readme: str = "README.md"  # "" = do not touch the README


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


def publish(cfg: PublishConfig) -> Path:
    src = Path(cfg.eval_dir)
    if not (src / "results.json").is_file():
        raise ConfigError(f"{src} holds no results.json; pass the output folder of eval.run as --eval_dir")
    dest = Path(cfg.target) / cfg.name
    results = relative_paths(read_json(src / "results.json"))
    dest.mkdir(parents=True, exist_ok=True)
    for png in sorted(src.glob("*.png")):
        shutil.copyfile(png, dest / png.name)
    write_text(dest / "report.md", relative_paths((src / "report.md").read_text(encoding="utf-8")))
    timings_file = src.parent / "timings.json"
    timings = relative_paths(read_json(timings_file)) if timings_file.is_file() else None
    if timings is not None:
        write_json(dest / "timings.json", timings)
    machine = {**machine_facts(), "command": cfg.command, "dtype": _dtype_used(src)}
    write_json(dest / "machine.json", machine)
    write_json(dest / "results.json", results)  # last: its presence marks a complete copy
    if cfg.readme:
        replace_marked_block(cfg.readme, f"results:{cfg.name}", readme_block(results, machine, timings, dest))
    return dest


def _dtype_used(eval_dir: Path) -> str | None:
    """The dtype the evaluated checkpoints ran in (from their qa_config.json), if one is found."""
    config = next(iter(sorted(eval_dir.parent.glob("qa/*/best/qa_config.json"))), None)
    return read_json(config).get("dtype") if config else None


def _commit_note(results: dict) -> str:
    """Where the result's code came from: its commit (results.json provenance), flagged when it is not
    the commit being published from; older results without provenance say so."""
    from eval.provenance import git_state

    prov = results.get("provenance")
    if not prov or not prov.get("commit"):
        return " Produced before results recorded their commit."
    made, now = prov["commit"], git_state().get("commit")
    dirty = " with uncommitted changes" if prov.get("dirty") else ""
    if now and now != made:
        return f" Produced at commit {made[:7]}{dirty}, an older commit than this checkout's {now[:7]}."
    return f" Produced at commit {made[:7]}{dirty}."


def readme_block(results: dict, machine: dict, timings: dict | None, dest: Path) -> str:
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
    return (f"Generated by `python -m eval.publish` from [`{dest.as_posix()}/results.json`]({dest.as_posix()}/results.json) "
            f"([report]({dest.as_posix()}/report.md)); command `{machine['command']}` on {machine['cpus']} x "
            f"{machine['cpu']} ({flags}; dtype {machine.get('dtype') or 'auto'}){when}.{_commit_note(results)}\n\n"
            + "\n".join(findings(results)[2:]).strip() + "\n\n"  # a table right after a list joins its last item
            + results_markdown_table(results)
            + f"\n\n![accuracy by tier]({dest.as_posix()}/accuracy_by_tier.png)")


@cli_entry
def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(PublishConfig, argv, prog="python -m eval.publish")
    dest = publish(cfg)
    print(f"published {cfg.eval_dir} -> {dest}" + (f"; README block results:{cfg.name} updated" if cfg.readme else ""))
    return dest


if __name__ == "__main__":
    main()
