"""One config system for every entry point: typed dataclasses, YAML files, CLI overrides.

    cfg = parse_config(TrainConfig, argv)          # --config run.yaml --lr 1e-4 --lora.r 8
    save_config(cfg, out_dir / "config.yaml")      # the run is reproducible from this file

Precedence: dataclass defaults < ``--config`` YAML < ``--key value`` overrides. Nested
dataclasses are addressed with dots (``--lora.r 8``). Values are converted to the field's
type, so a typo or a wrong type is a one-line :class:`ConfigError`, not a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from medtok_core.errors import ConfigError
from medtok_core.io import write_text

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (a YAML value or a CLI string) to the annotated type ``tp``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        if len(args) == 1:
            return _convert(value, args[0], name)
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} expects a list (comma-separated on the command line)")
        items = [_convert(v, item_tp, name) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} expects a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{name} expects true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} expects {tp.__name__}, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} expects {tp.__name__}, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return number
    if tp is str:
        return str(value)
    if tp is Path:
        return Path(value)
    return value


class FieldError(ConfigError):
    """A config value out of its range; :func:`from_dict` adds the section prefix to ``field``."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}")


def require_range(cfg: Any, name: str, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False, high_open: bool = False) -> None:
    """Check ``cfg.<name>`` (for ``__post_init__``): ``low <= value <= high`` (``<`` where open)."""
    value = getattr(cfg, name)
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
        hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
        raise FieldError(name, f"must satisfy {lo}{name.rsplit('.', 1)[-1]}{hi}, got {value!r}")


def require_choice(cfg: Any, name: str, choices) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        shown = ", ".join(str(c) if c != "" else '""' for c in choices)
        raise FieldError(name, f"must be one of {shown}, got {value!r}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested, possibly partial) mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown option {prefix}{unknown[0]!s}; valid options: {', '.join(sorted(types_))}"
        )
    kwargs = {}
    for key, value in data.items():
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _convert(value, tp, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except FieldError as err:
        raise FieldError(f"{prefix}{err.field}", err.problem) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-YAML-safe dict of a config (paths as strings, tuples as lists)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(dataclasses.asdict(cfg))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping of option: value")
    return data


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"option --{dotted}: {p} is not a section")
    tree[leaf] = value


def _help_lines(cls: type, prefix: str = "") -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            lines += _help_lines(tp, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            line = f"  --{prefix}{f.name} (default: {default})"
            if callable(f.metadata.get("choices")):  # e.g. a registry of plug-ins, read at --help time
                line += f"  choices: {', '.join(f.metadata['choices']())}"
            lines.append(line)
    return lines


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    """Parse ``--config FILE`` and ``--key value`` / ``--key=value`` overrides into ``cls``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        doc = (cls.__doc__ or "").strip()
        print(f"usage: {prog or 'command'} [--config FILE.yaml] [--option value ...]\n\n{doc}\n")
        print("\n".join(_help_lines(cls)))
        raise SystemExit(0)
    overrides: dict[str, Any] = {}
    data: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --name value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                value = "true"  # a bare flag switches a boolean on
            else:
                i += 1
                value = argv[i]
        key = key.replace("-", "_")
        if key == "config":
            data = _merge(data, load_yaml(value))
        else:
            _set_dotted(overrides, key, value)
        i += 1
    return from_dict(cls, _merge(data, overrides))


def first_difference(old: Any, new: Any, prefix: str = "", ignore: tuple[str, ...] = ("resume", "force")
                     ) -> str | None:
    """``"optim.lr: 0.0002 -> 0.01"`` for the first setting that differs (top-level ``ignore`` keys
    say how to treat a folder, not what the run is), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if prefix == "" and key in ignore:
                continue
            diff = first_difference(old.get(key), new.get(key), f"{prefix}{key}.", ignore)
            if diff:
                return diff
        return None
    return None if old == new else f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


def starts_fresh(cfg: Any, saved: Path, out: Path) -> bool:
    """Whether a run in folder ``out`` must start over; raises if it holds a run with other settings.

    ``saved`` is the config the folder's run saved, ``cfg`` (with ``resume`` and ``force`` fields)
    the one about to run. Same settings: resume. Other settings: an error that says how to
    proceed, unless ``force`` (or ``resume: false``) says to start over.
    """
    if not saved.is_file():
        return not cfg.resume
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        old = None
    diff = first_difference(old, to_dict(cfg)) if isinstance(old, dict) else f"its {saved.name} is unreadable"
    if diff is None:
        return not cfg.resume
    if cfg.force or not cfg.resume:
        return True
    raise ConfigError(f"output_dir {out} holds a run with other settings ({diff}); use another --output_dir, "
                      "or --force true to discard that run")


def save_config(cfg: Any, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
