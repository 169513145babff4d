"""The command line as an HF/PyTorch user expects it: one ``medtok-qa`` command with a subcommand
per stage, list options given as repeated values, help text for every option, ``--print_config``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from commons.config import ConfigError, _field_types, field_docs, from_dict, load_yaml, parse_config
from recipes import cli

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Inner:
    """A nested section."""

    r: int = 4  # LoRA rank
    # Modules to adapt.
    targets: list[str] | None = None


@dataclass
class Cmd:
    """A command."""

    checkpoints: list[str] = field(default_factory=list)  # checkpoint folders
    seeds: list[int] = field(default_factory=lambda: [0])
    lr: float = 1e-3
    # A comment block of
    # two lines.
    alpha: float = 1.0
    beta: float = 2.0

    gamma: float = 3.0
    """Attribute docstring."""
    name: str = field(default="x", metadata={"help": "explicit help"})
    inner: Inner = field(default_factory=Inner)


# ---------------------------------------------------------------- lists


@pytest.mark.parametrize("argv", [
    ["--checkpoints", "a", "b", "c"],
    ["--checkpoints", "a", "--checkpoints", "b", "c"],
    ["--checkpoints", "a,b,c"],
    ["--checkpoints", "a,b", "--checkpoints=c"],
])
def test_list_options_as_repeated_values_or_commas(argv):
    assert parse_config(Cmd, argv).checkpoints == ["a", "b", "c"]


def test_list_options_from_yaml_and_cli_give_the_same_config(tmp_path):
    (tmp_path / "c.yaml").write_text("checkpoints: [a, b]\nseeds: [1, 2]\ninner: {targets: [q_proj, v_proj]}\n")
    from_yaml = parse_config(Cmd, ["--config", str(tmp_path / "c.yaml")])
    from_cli = parse_config(Cmd, ["--checkpoints", "a", "b", "--seeds", "1", "2",
                                  "--inner.targets", "q_proj", "v_proj"])
    assert from_yaml == from_cli
    assert from_cli.seeds == [1, 2] and from_cli.inner.targets == ["q_proj", "v_proj"]
    # the command line replaces a YAML list, it does not append to it
    assert parse_config(Cmd, ["--config", str(tmp_path / "c.yaml"), "--checkpoints", "z"]).checkpoints == ["z"]


def test_list_edge_cases():
    assert parse_config(Cmd, ["--seeds", ""]).seeds == []  # the empty list
    assert parse_config(Cmd, ["--inner.targets", "none"]).inner.targets is None
    assert parse_config(Cmd, ["--lr", "1", "--lr", "2"]).lr == 2.0  # a scalar repeated: the last wins
    with pytest.raises(ConfigError, match="seeds expects int, got 'x'"):
        parse_config(Cmd, ["--seeds", "1", "x"])
    with pytest.raises(ConfigError, match="lr takes one value, got 2: 1 2"):
        parse_config(Cmd, ["--lr", "1", "2"])
    with pytest.raises(ConfigError, match=r"--inner is a group of options; set one as --inner.<name> value"):
        parse_config(Cmd, ["--inner", "3"])


# ---------------------------------------------------------------- help


def test_help_text_comes_from_the_field_comments():
    docs = field_docs(Cmd)
    assert docs["checkpoints"] == "checkpoint folders"
    assert docs["alpha"] == "A comment block of two lines."
    assert "beta" not in docs  # a comment documents the field below it only
    assert "seeds" not in docs and "lr" not in docs  # nothing above them, nothing on their line
    assert docs["gamma"] == "Attribute docstring."
    assert docs["name"] == "explicit help"
    assert field_docs(Inner) == {"r": "LoRA rank", "targets": "Modules to adapt."}


def _entry_configs():
    from disease_linking.link import LinkCLIConfig
    from eval.evaluate import EvalConfig
    from medtok_core.build import BuildConfig
    from medtok_core.train import TrainConfig as MedTokConfig
    from qa.training import TrainConfig as QAConfig
    from recipes.linking_quality import QualityConfig
    from recipes.pipeline import PipelineConfig
    from recipes.publish import PublishConfig

    return [BuildConfig, MedTokConfig, LinkCLIConfig, QAConfig, EvalConfig, PipelineConfig, QualityConfig,
            PublishConfig]


def _undocumented(cls, prefix=""):
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _undocumented(tp, f"{prefix}{f.name}.")
        elif not docs.get(f.name):
            yield f"{cls.__name__}: --{prefix}{f.name}"


@pytest.mark.parametrize("cls", _entry_configs(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_option_of_every_entry_point_has_help(cls):
    assert list(_undocumented(cls)) == []


# ---------------------------------------------------------------- --print_config

CONFIG_FILES = {"medtok_quick.yaml": "recipes.train_tokenizer", "medtok_full.yaml": "recipes.train_tokenizer",
                "medtok_quick_before.yaml": "recipes.train_tokenizer", "medtok_quality_full.yaml": "recipes.medtok_quality",
                "qa_quick.yaml": "qa.training", "qa_paper.yaml": "qa.training",
                "pipeline_quick.yaml": "recipes.pipeline", "pipeline_full.yaml": "recipes.pipeline",
                "pipeline_cpu.yaml": "recipes.pipeline", "recipe_sweep.yaml": "recipes.recipe",
                "pipeline_kgqa.yaml": "recipes.pipeline", "pipeline_kgqa_quick.yaml": "recipes.pipeline",
                "pipeline_kgqa_oracle.yaml": "recipes.pipeline", "pipeline_kgqa_frozen.yaml": "recipes.pipeline",
                "ehr_demo.yaml": "recipes.ehr_pipeline", "ehr_full.yaml": "recipes.ehr_pipeline"}


def _config_class(module: str):
    import importlib

    mod = importlib.import_module(module)
    names = {"recipes.pipeline": "PipelineConfig", "recipes.medtok_quality": "QualityConfig", "recipes.recipe": "RecipeConfig",
             "recipes.ehr_pipeline": "EhrPipelineConfig"}
    return getattr(mod, names.get(module, "TrainConfig"))


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_print_config_round_trips_every_shipped_config(name, tmp_path, capsys):
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml")) == sorted(CONFIG_FILES)
    cls = _config_class(CONFIG_FILES[name])
    path = REPO / "configs" / name
    cfg = parse_config(cls, ["--config", str(path)])
    assert cfg == from_dict(cls, load_yaml(path))  # the YAML file means what it meant
    key, override, expected = {"PipelineConfig": ("seeds", ["3", "4"], [3, 4]),
                               "EhrPipelineConfig": ("seeds", ["3", "4"], [3, 4]),
                               "RecipeConfig": ("alpha", ["0.01"], 0.01)}.get(cls.__name__, ("seed", ["5"], 5))
    with pytest.raises(SystemExit) as stop:
        parse_config(cls, ["--config", str(path), f"--{key}", *override, "--print_config"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    again = parse_config(cls, ["--config", str(tmp_path / "printed.yaml")])
    assert again == parse_config(cls, ["--config", str(path), f"--{key}", *override])
    assert yaml.safe_load(printed)[key] == expected


def test_print_config_still_checks_the_values(capsys):
    with pytest.raises(ConfigError, match="unknown option nope"):
        parse_config(Cmd, ["--nope", "1", "--print_config"])


# ---------------------------------------------------------------- medtok-qa


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["medtok-qa"].split(":")
    assert (module, func) == ("recipes.cli", "main")
    for name in ("build", "train-tokenizer", "link", "finetune", "eval", "ask", "pipeline", "quality"):
        assert name in cli.commands()


def test_top_level_help_imports_no_heavy_library():
    code = ("import sys, recipes.cli\ntry:\n    recipes.cli.main(['--help'])\nexcept SystemExit as e:\n    assert not e.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out
    assert "train-tokenizer" in out and "finetune" in out


@pytest.mark.parametrize("name", list(cli.commands()))
def test_every_subcommand_help_exits_0(name, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out
    assert "--" in out  # lists its options
    assert f"usage: medtok-qa {name} " in out


BAD = {  # a bad option for each command, and what its one error line says
    "data": (["--colour", "red"], "unrecognized arguments: --colour red"),
    "build": (["--colour", "red"], "unknown option colour"),
    "train-tokenizer": (["--colour", "red"], "unknown option colour"),
    "link": (["--colour", "red"], "unknown option colour"),
    "kgqa": (["--test_per_condition", "0"], "test_per_condition"),
    "finetune": (["--optim.colour", "red"], "unknown option optim.colour"),
    "reference": (["--model.colour", "red"], "unknown option model.colour"),
    "eval": (["--colour", "red"], "unknown option colour"),
    "ask": (["--checkpoint", "x", "--colour", "red"], "unrecognized arguments: --colour red"),
    "pipeline": (["--colour", "red"], "unknown option colour"),
    "quality": (["--colour", "red"], "unknown option colour"),
    "publish": (["--colour", "red"], "unknown option colour"),
    "recipe": (["--colour", "red"], "unknown option colour"),
    "medtok-quality": (["--colour", "red"], "colour"),
    "ehr": (["--colour", "red"], "unknown ehr step '--colour'"),
}


@pytest.mark.parametrize("name", list(cli.commands()))
def test_a_bad_option_through_medtok_qa_is_one_error_line(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, message = BAD[name]
    with pytest.raises(SystemExit) as stop:
        cli.main([name, *argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert message in errors[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv, message", [(["trian"], "unknown command 'trian'"),
                                            (["--config", "x.yaml"], "the command comes first")])
def test_a_bad_command_is_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("error:") == 1 and message in err, err


def test_python_m_modules_keep_working():
    out = subprocess.run([sys.executable, "-m", "recipes.build", "--print_config", "--rebuild"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(out)["rebuild"] is True
