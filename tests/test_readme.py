"""The README stays short, its result summaries are the ones the result files give, and its recipes
("Using the pieces") run as written after ``make demo``: every option parses, every input path is one
the demo (or an earlier recipe) produces, every link resolves."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from commons.config import parse_config
from recipes import readme as readme_recipe
from recipes.pipeline import PipelineConfig, plan

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_LINES = 200
# options whose value a command reads (an input path), by command; everything else under runs/ is written
INPUT_OPTIONS = {"--checkpoint", "--checkpoints", "--medtok", "--data.train_file", "--data", "--input",
                 "--data.user_codes", "--config", "--meds_dir", "--runs", "--init"}


def readme_commands() -> list[list[str]]:
    """The ``medtok-qa`` commands of the README's bash blocks, in order (continuation lines joined)."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("medtok-qa "):
                commands.append(shlex.split(line))
    return commands


def demo_paths() -> set[Path]:
    """Every path the demo's stages write (their outputs and run folders, and the folders above them)."""
    found: set[Path] = set()
    for stage in plan(parse_config(PipelineConfig, ["--config", str(REPO / "configs/pipeline_quick.yaml")])):
        for path in [*stage.outputs, *([stage.workdir] if stage.workdir else [])]:
            path = Path(path).resolve().relative_to(Path.cwd())  # the plan resolves them against the cwd
            found.update([path, *path.parents])
    return found


def values_of(argv: list[str], option: str) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] == option:
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                out.append(argv[i])
                i += 1
        else:
            i += 1
    return out


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_readme_summaries_are_generated_from_the_result_files(tmp_path):
    copy = tmp_path / "README.md"
    shutil.copyfile(README, copy)
    readme_recipe.write_summaries(copy, REPO)
    assert copy.read_text(encoding="utf-8") == README.read_text(encoding="utf-8"), \
        "README summaries differ from the result files: run python -m recipes.readme"


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), f"README links to {target}, which does not exist"


def test_readme_commands_read_only_what_the_demo_or_an_earlier_command_produces(monkeypatch):
    monkeypatch.chdir(REPO)
    commands = readme_commands()
    assert len(commands) >= 5
    produced = set(demo_paths())
    # files the README writes itself with a shell redirection (printf ... > runs/x.csv)
    produced.update(Path(p) for p in re.findall(r"> (runs/\S+)", README.read_text(encoding="utf-8")))
    for argv in commands:
        for option in INPUT_OPTIONS:
            for value in values_of(argv, option):
                if value.startswith("runs/"):
                    assert Path(value) in produced, f"{' '.join(argv[:2])} reads {value}, which nothing before produces"
                else:
                    assert (REPO / value).exists(), f"{' '.join(argv[:2])} reads {value}, not in the repository"
        for option in ("--output", "--output_dir"):
            for value in values_of(argv, option):
                produced.update([Path(value), *Path(value).parents])


def test_the_demo_writes_where_the_readme_says(monkeypatch):
    monkeypatch.chdir(REPO)
    paths = demo_paths()
    text = README.read_text(encoding="utf-8")
    for path in ("runs/pipeline/eval/report.md", "runs/pipeline/medtok/artifact", "runs/pipeline/linked/linked.jsonl",
                 "runs/pipeline/qa/medtok-seed0", "runs/pipeline/qa/none-seed0"):
        assert path in text and Path(path) in paths


@pytest.mark.parametrize("argv", [a for a in readme_commands() if a[1] != "ask"], ids=lambda a: a[1])
def test_readme_command_options_parse(argv):
    """Each README command's options are ones its command knows (``--print_config`` parses, runs nothing)."""
    out = subprocess.run([sys.executable, "-m", "recipes.cli", *argv[1:], "--print_config", "true"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_readme_ask_command_options_parse():
    from recipes import ask

    argv = next(a for a in readme_commands() if a[1] == "ask")
    with pytest.raises(SystemExit) as info:  # --help after every option: parses them all, then exits 0
        ask.main([*argv[2:], "--help"])
    assert info.value.code == 0
