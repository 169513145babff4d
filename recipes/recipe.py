"""Is the fine-tune above the floor? Recipe sweep of LoRA-only training, judged on the held-out slice.

    python -m recipes.recipe --config configs/recipe_sweep.yaml        # resumable: rerun to continue

No prefix comparison can show anything while the LoRA-only model (``prefix_mode none``) sits at
the majority-letter baseline, so the recipe (learning rate, epochs, LoRA targets and rank, option
shuffling) is chosen here first, on the Intermediate held-out slice only; the test tiers (Basic,
Expert) are never scored by this command.

Each recipe is one fine-tune (``python -m finetune.train`` with the base config plus the recipe's
overrides) in ``OUTPUT/<recipe>/``; a killed sweep resumes where it stopped (finished fine-tunes
are reused, an interrupted one continues from its last saved step). The held-out accuracy after
every epoch comes from the run's ``metrics.jsonl``; beside it the report puts the slice's
majority-letter rate (file order, which is how the slice is scored) and chance, a 95% Wilson
interval, and a one-sided exact binomial p-value of "accuracy > majority-letter rate".
Outputs: ``results.json``, ``report.md``, ``recipes.png``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commons.config import ConfigError, load_yaml, parse_config, require_range, save_config
from commons.datadir import data_file
from commons.errors import cli_entry
from commons.io import docs_root, page_link, read_json, replace_marked_block, write_json
from commons.machine import machine_facts
from disease_linking.questions import load_mcq
from eval.stats import chance_accuracy, majority_letter_baseline

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RecipeConfig:
    """Recipe sweep of LoRA-only fine-tunes, judged on the held-out slice only."""

    # Fine-tune config every recipe starts from (YAML, relative to the cwd or the repository).
    base_config: str = "configs/qa_quick.yaml"
    # Question file the fine-tunes read (MedDDx layout or linked JSONL); "" = the data dir's MedDDx.
    questions: str = ""
    output: str = "runs/recipe_sweep"
    # Recipe name -> overrides of the base config (dotted keys, e.g. optim.lr: 1.0e-4).
    recipes: dict = field(default_factory=lambda: {"base": {}})
    # Overrides applied to every recipe (before its own).
    common: dict = field(default_factory=lambda: {"model.prefix_mode": "none"})
    # Significance level of "above the majority-letter baseline".
    alpha: float = 0.05
    # false = run no fine-tune, only collect what the recipe folders hold so far (e.g. mid-sweep).
    train: bool = True
    # Also publish: results, report and plot to docs/results/recipe_sweep/ and the table between the
    # <!-- recipe:sweep --> markers of this Markdown page (docs/results/meddx_cpu.md).
    page: str | None = None

    def __post_init__(self):
        require_range(self, "alpha", 0.0, 1.0, low_open=True, high_open=True)
        if not self.recipes:
            raise ConfigError("recipes is empty; give at least one recipe name with its overrides")
        for name, overrides in self.recipes.items():
            if not str(name).replace("-", "").replace("_", "").isalnum():
                raise ConfigError(f"recipe name {name!r} must be letters, digits, '-' or '_' (it names a folder)")
            if not isinstance(overrides or {}, dict):
                raise ConfigError(f"recipe {name!r} must map option names to values, e.g. optim.lr: 1.0e-4")


def _cli_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "null" if value is None else str(value)


def finetune_argv(cfg: RecipeConfig, name: str) -> list[str]:
    """The fine-tune command of one recipe (the base config, the common and the recipe's overrides)."""
    argv = [sys.executable, "-m", "finetune.train", "--config", cfg.base_config,
            "--output_dir", str(Path(cfg.output) / name)]
    if cfg.questions:
        argv += ["--data.train_file", cfg.questions]
    for key, value in {**cfg.common, **(cfg.recipes[name] or {})}.items():
        argv += [f"--{key}", _cli_value(value)]
    return argv


def epoch_evals(run: Path) -> list[dict]:
    """The end-of-epoch held-out evaluations of a run, last record per epoch (a resume may repeat one)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "eval" and record.get("epoch_complete"):
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def heldout_floor(run: Path, questions: Path) -> dict:
    """Majority-letter rate and chance on the run's held-out slice (as written in its split.json)."""
    split = read_json(run / "split.json")
    items, _ = load_mcq(questions)
    by_id = {it.id: it for it in items}
    val = [by_id[i] for i in split["val"] if i in by_id]
    if not val:
        raise ConfigError(f"{run}/split.json names no question of {questions}; is --questions the file it trained on?")
    majority = majority_letter_baseline([it.answer for it in val])  # the report's own floor
    return {"n": len(val), "majority_letter": majority["letter"], "majority_rate": majority["accuracy"],
            "chance": chance_accuracy([len(it.options) for it in val])}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (stays inside [0, 1] for small n)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def p_above(k: int, n: int, p0: float) -> float:
    """One-sided exact binomial p-value of observing >= k correct of n at rate p0."""
    from scipy.stats import binomtest

    return float(binomtest(k, n, p0, alternative="greater").pvalue)


def summarise(name: str, evals: list[dict], floor: dict, alpha: float) -> dict:
    epochs = []
    for record in evals:
        n = int(record["n_val"])
        k = round(record["val_acc"] * n)
        low, high = wilson(k, n)
        p = p_above(k, n, floor["majority_rate"])
        epochs.append({"epoch": int(record["epoch"]), "acc": k / n, "correct": k, "n": n,
                       "ci95": [low, high], "val_nll": record.get("val_nll"),
                       "p_above_majority": p, "above_majority": p < alpha})
    best = max(epochs, key=lambda e: (e["acc"], -e["epoch"])) if epochs else None
    return {"recipe": name, "epochs": epochs, "best_epoch": best["epoch"] if best else None,
            "best_acc": best["acc"] if best else None}


def _run_dtype(run: Path) -> str | None:
    saved = run / "train_config.yaml"
    return (load_yaml(saved).get("model") or {}).get("dtype") if saved.is_file() else None


def _machine_line(results: dict) -> str:
    facts = results["machine"]
    flags = ", ".join(facts.get("cpu_flags") or []) or "no avx512/amx flags"
    return f"{facts.get('cpu', '?')}, {facts.get('cpus', '?')} CPUs ({flags}), dtype {results['dtype']}"


DEFAULT_QUESTIONS = "meddx/MedDDx.json"  # in the data directory


def questions_file(cfg: RecipeConfig) -> str:
    """The question file the fine-tunes read, as the user would name it ("" = the data dir's MedDDx)."""
    if cfg.questions:
        return cfg.questions
    return (load_yaml(cfg.base_config).get("data") or {}).get("train_file") or ""


def run_recipe(cfg: RecipeConfig, name: str) -> None:
    argv = finetune_argv(cfg, name)
    print(f"== recipe {name}: {' '.join(argv[1:])}", flush=True)
    code = subprocess.call(argv, cwd=REPO_ROOT)
    if code == 2:
        raise ConfigError(f"recipe {name!r}: the fine-tune rejected its options (its error is above)")
    if code != 0:
        raise SystemExit(code)


def table_lines(results: dict) -> list[str]:
    floor = results["floor"]
    lines = [f"Base config `{results['base_config']}`; held-out slice n={floor['n']}; majority letter "
             f"{floor['majority_letter']} = {100 * floor['majority_rate']:.1f} %; chance {100 * floor['chance']:.1f} %. "
             "Test tiers were not scored. Accuracy [95% Wilson interval]; p = one-sided exact binomial "
             "test of accuracy > majority-letter rate.", "", f"Machine: {_machine_line(results)}.", "",
             "Every recipe: " + (", ".join(f"`{k}={_cli_value(v)}`" for k, v in results["common"].items()) or "—") + ".", "",
             "| recipe | overrides | epoch | held-out acc % | 95% CI | p (> majority) |", "|---|---|---|---|---|---|"]
    for name, summary in results["recipes"].items():
        overrides = ", ".join(f"`{k}={_cli_value(v)}`" for k, v in (results["overrides"][name] or {}).items()) or "—"
        for e in summary["epochs"]:
            mark = "**" if e["above_majority"] else ""
            lines.append(f"| {name} | {overrides} | {e['epoch']} | {mark}{100 * e['acc']:.1f}{mark} | "
                         f"{100 * e['ci95'][0]:.1f}–{100 * e['ci95'][1]:.1f} | {e['p_above_majority']:.3f} |")
    above = [f"{name} (epoch {e['epoch']})" for name, summary in results["recipes"].items()
             for e in summary["epochs"] if e["above_majority"]]
    verdict = (f"Above the majority-letter rate at α={results['alpha']} (bold): {', '.join(above)}." if above else
               f"**No recipe is above the majority-letter rate at any epoch** (α={results['alpha']}).")
    return [*lines, "", verdict]


def write_report(out: Path, results: dict) -> None:
    lines = ["# Recipe sweep: LoRA-only (`prefix_mode none`) on the Intermediate held-out slice", "",
             *table_lines(results), "", "![recipes](recipes.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def publish(out: Path, page: Path) -> Path:
    """Copy the sweep's results, report and plot to docs/results/recipe_sweep/ and regenerate the
    ``<!-- recipe:sweep -->`` block of ``page`` from that results.json."""
    dest = docs_root(page) / "docs" / "results" / "recipe_sweep"
    link = page_link(page, dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "report.md", "recipes.png"):
        if (out / name).resolve() != (dest / name).resolve():  # republishing the published folder: in place
            shutil.copyfile(out / name, dest / name)
    results = read_json(dest / "results.json")
    block = [f"Generated by `python -m recipes.recipe` from [`results.json`]"
             f"({link}/results.json) ([report]({link}/report.md)).", "",
             *table_lines(results), "", f"![recipes]({link}/recipes.png)"]
    replace_marked_block(page, "recipe:sweep", "\n".join(block))
    return dest


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, summary in results["recipes"].items():
        xs = [e["epoch"] for e in summary["epochs"]]
        ys = [100 * e["acc"] for e in summary["epochs"]]
        err = [[100 * (e["acc"] - e["ci95"][0]) for e in summary["epochs"]],
               [100 * (e["ci95"][1] - e["acc"]) for e in summary["epochs"]]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    floor = results["floor"]
    ax.axhline(100 * floor["majority_rate"], color="k", ls="--", lw=1, label=f"majority letter ({floor['majority_letter']})")
    ax.axhline(100 * floor["chance"], color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(sorted({e["epoch"] for s in results["recipes"].values() for e in s["epochs"]}))
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"LoRA-only recipes, Intermediate held-out (n={floor['n']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recipes.png", dpi=120)
    plt.close(fig)


def collect(cfg: RecipeConfig) -> dict:
    """Results of the recipes from what their folders hold (finished or not)."""
    out = Path(cfg.output)
    started = [n for n in cfg.recipes if (out / n / "split.json").is_file()]
    if not started:
        raise ConfigError(f"no recipe of {out} has started yet; run python -m recipes.recipe without --train false")
    label = questions_file(cfg)
    floor = heldout_floor(out / started[0], Path(label) if label else data_file(DEFAULT_QUESTIONS))
    return {"base_config": cfg.base_config, "questions": label or f"<data dir>/{DEFAULT_QUESTIONS}", "alpha": cfg.alpha,
               "floor": floor, "machine": machine_facts(), "dtype": _run_dtype(out / started[0]),
               "common": cfg.common, "overrides": {n: o or {} for n, o in cfg.recipes.items()},
               "recipes": {n: summarise(n, epoch_evals(out / n), floor, cfg.alpha) for n in started}}


def sweep(cfg: RecipeConfig) -> dict:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train:
        save_config(cfg, out / "recipe_config.yaml")
        for name in cfg.recipes:
            run_recipe(cfg, name)
    results = collect(cfg)
    from eval.provenance import provenance

    # commit, dirty flag, machine, command, and the fine-tune seed of each recipe (0 unless set)
    results["provenance"] = provenance([int({**(cfg.common or {}), **(o or {})}.get("seed", 0))
                                        for o in cfg.recipes.values()])
    write_json(out / "results.json", results)
    write_report(out, results)
    plot(out, results)
    print(f"report: {out / 'report.md'}")
    if cfg.page:
        print(f"published to {publish(out, Path(cfg.page))}")
    return results


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    return sweep(parse_config(RecipeConfig, argv, prog="python -m recipes.recipe"))


if __name__ == "__main__":
    main()
