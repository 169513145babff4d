"""``python -m recipes.finetune``: ``accelerate launch finetune/train.py`` with the project's error contract.

    python -m recipes.finetune --config_file configs/accelerate/cpu.yaml \
        --config configs/qa_quick.yaml --prefix_mode medtok --medtok ART --data.train_file LINKED

The options accelerate's launcher knows (``--config_file``, ``--num_processes``, ``--multi_gpu``,
``--use_deepspeed``, ...; see ``LAUNCH_OPTIONS``) go to accelerate, everything else to
``finetune/train.py``. The training config is parsed and checked here first, so a bad option or
a conflicting run folder is one ``error:`` line and exit 2 before any process starts; a user
error inside the launched processes is their one ``error:`` line and exit 2 as well, instead of
accelerate's CalledProcessError/ChildFailedError traceback and exit 1. ``accelerate launch
finetune/train.py ...`` keeps working; only its error output is accelerate's.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from commons.config import parse_config
from commons.errors import ConfigError, cli_entry

SHORTCUTS = {"--prefix_mode": "--model.prefix_mode", "--medtok": "--model.medtok",
             "--base_model": "--model.base_model"}


def expand_shortcuts(argv: list[str]) -> list[str]:
    """``--prefix_mode X`` = ``--model.prefix_mode X`` (and the other shortcuts), hyphens as underscores."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if key.startswith("--"):
            key = "--" + key[2:].replace("-", "_")
            key = SHORTCUTS.get(key, key)
        out.append(f"{key}{eq}{value}" if eq else key)
    return out


TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "finetune" / "train.py"
# accelerate launch options this wrapper passes through: name -> takes a value
LAUNCH_OPTIONS = {"--config_file": True, "--num_processes": True, "--num_machines": True, "--machine_rank": True,
                  "--main_process_ip": True, "--main_process_port": True, "--mixed_precision": True,
                  "--gpu_ids": True, "--zero_stage": True, "--deepspeed_config_file": True,
                  "--multi_gpu": False, "--use_deepspeed": False, "--cpu": False}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(accelerate's options, the training script's options)."""
    launch, train = [], []
    i = 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            takes_value = LAUNCH_OPTIONS[name] and "=" not in argv[i]
            if takes_value and i + 1 >= len(argv):
                raise ConfigError(f"{name} needs a value")
            launch += argv[i:i + 1 + takes_value]
            i += 1 + takes_value
        else:
            train.append(argv[i])
            i += 1
    return launch, train


def _check_launch_options(launch: list[str]) -> None:
    for i, arg in enumerate(launch):
        name, _, value = arg.partition("=")
        if name == "--config_file":
            path = Path(value or launch[i + 1])
            if not path.is_file():
                raise ConfigError(f"accelerate config file {path} does not exist; pass one of configs/accelerate/*.yaml "
                                  "or create one with `accelerate config`")


def preflight(train_args: list[str]) -> str:
    """Everything that can be checked before processes start (parse, ranges, run-folder conflicts);
    returns the run folder."""
    from qa.training import TrainConfig, preflight_checks

    cfg = parse_config(TrainConfig, expand_shortcuts(train_args), prog="python -m recipes.finetune")
    preflight_checks(cfg)
    return cfg.output_dir


def launch(launch_args: list[str], train_args: list[str]) -> int:
    """Run accelerate's launcher in this process; returns the training processes' exit code."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args([*launch_args, str(TRAIN_SCRIPT), *train_args])
    # torch.distributed's agent logs a failure report of its own; the child has said what is wrong.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as err:
        return err.returncode
    except ChildFailedError as err:
        return next((f.exitcode for f in err.failures.values() if f.exitcode), 1)
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__)
    launch_args, train_args = split_argv(argv)
    _check_launch_options(launch_args)
    output_dir = preflight(train_args)
    from commons.runlock import run_lock

    with run_lock(output_dir, "medtok-qa finetune"):  # the training processes write under it
        code = launch(launch_args, train_args)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
