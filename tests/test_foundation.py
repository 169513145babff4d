"""Config system, data-directory lookup, atomic writes, and the CLI error wrapper."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from commons import datadir
from commons.config import parse_config, save_config
from commons.errors import ConfigError, DataFileError, UserError, cli_entry
from commons.io import atomic_dir, atomic_path, sha256_file


@dataclass
class LoraArgs:
    r: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class RunArgs:
    """A toy run config."""

    lr: float = 1e-4
    mode: Literal["none", "medtok"] = "none"
    shuffle: bool = False
    out: Path = Path("runs/x")
    seed: int | None = None
    lora: LoraArgs = field(default_factory=LoraArgs)
    overrides: dict = field(default_factory=dict)


def test_config_defaults_yaml_and_cli_precedence(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("lr: 0.001\nlora:\n  r: 4\n")
    cfg = parse_config(RunArgs, ["--config", str(cfg_file), "--lora.alpha=8", "--mode", "medtok",
                                 "--shuffle", "--lora.targets", "q_proj,k_proj"])
    assert cfg.lr == 0.001 and cfg.lora.r == 4 and cfg.lora.alpha == 8.0
    assert cfg.mode == "medtok" and cfg.shuffle is True and cfg.seed is None
    assert cfg.lora.targets == ["q_proj", "k_proj"]
    # CLI beats YAML
    assert parse_config(RunArgs, ["--config", str(cfg_file), "--lr", "0.5"]).lr == 0.5


def test_config_round_trip_through_saved_yaml(tmp_path):
    cfg = parse_config(RunArgs, ["--lr", "3e-5", "--seed", "7", "--out", "runs/y"])
    save_config(cfg, tmp_path / "config.yaml")
    again = parse_config(RunArgs, ["--config", str(tmp_path / "config.yaml")])
    assert again == cfg


def test_a_mapping_option_takes_a_yaml_mapping_on_the_command_line():
    cfg = parse_config(RunArgs, ["--overrides", "{optim.epochs: 2, data.limit_train: 0, tiers: [Basic, Expert]}"])
    assert cfg.overrides == {"optim.epochs": 2, "data.limit_train": 0, "tiers": ["Basic", "Expert"]}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "fast"], "lr expects float"),
        (["--mode", "other"], "is not one of none, medtok"),
        (["--lora.rank", "3"], "unknown option lora.rank"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["positional"], "unexpected argument"),
        (["--overrides", "[1, 2]"], "overrides expects a mapping"),
        (["--overrides", "{a: [}"], "overrides expects a mapping"),
    ],
)
def test_config_errors_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(RunArgs, argv)
    assert "\n" not in str(err.value)


def test_cli_entry_turns_user_errors_into_exit_2(capsys):
    @cli_entry
    def main():
        raise UserError("the thing is wrong; do this instead")

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: the thing is wrong; do this instead"


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_data_dir_lookup_order(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv(datadir.ENV_VAR, str(env_dir))
    assert datadir.resolve_data_dir() == env_dir
    assert datadir.resolve_data_dir(tmp_path) == tmp_path  # explicit option wins
    monkeypatch.setenv(datadir.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(DataFileError, match="MEDTOK_DATA_DIR"):
        datadir.resolve_data_dir()


def test_missing_and_corrupted_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataFileError, match=r"missing data file kg/repodb_full.csv .*adam-sam-brown/repoDB"):
        datadir.data_file("kg/repodb_full.csv", tmp_path)
    (tmp_path / "meddx").mkdir()
    (tmp_path / "meddx" / "MedDDx.json").write_text("[]")
    with pytest.raises(DataFileError, match="sha256 mismatch.*mims-harvard/KGARevion"):
        datadir.data_file("meddx/MedDDx.json", tmp_path)


def test_manifest_names_an_upstream_and_checksum_for_every_file():
    entries = datadir.manifest()
    assert "meddx/MedDDx.json" in entries
    for rel, entry in entries.items():
        assert len(entry["sha256"]) == 64, rel
        assert entry["kind"] in {"github", "pypi", "derived"}
        if entry["kind"] == "github":
            assert "@" in entry["upstream"] and len(entry["upstream"].split("@")[1]) >= 7


@pytest.mark.integration
def test_shared_data_dir_matches_manifest():
    root = Path(datadir.REPO_ROOT.parent / "shared" / "data")
    if not root.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    assert datadir.check_all(root) == []
    assert sha256_file(root / "meddx/MedDDx.json") == datadir.manifest()["meddx/MedDDx.json"]["sha256"]
    assert json.loads((root / "meddx/MedDDx.json").read_text())[0]["answer"] in "ABCD"
