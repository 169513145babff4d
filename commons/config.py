"""One config system for every entry point: typed dataclasses, YAML files, CLI overrides.

    cfg = parse_config(TrainConfig, argv)          # --config run.yaml --lr 1e-4 --lora.r 8
    save_config(cfg, out_dir / "config.yaml")      # the run is reproducible from this file

Precedence: dataclass defaults < ``--config`` YAML < ``--key value`` overrides. Nested
dataclasses are addressed with dots (``--lora.r 8``). Values are converted to the field's
type, so a typo or a wrong type is a one-line :class:`ConfigError`, not a traceback.
A list option takes several values (``--checkpoints a b``), repeats (``--checkpoints a
--checkpoints b``) or a comma-separated value (``--checkpoints a,b``); a YAML list as well.
``--help`` shows each option's comment from its dataclass (the comment on or above the field,
or ``metadata={"help": ...}``); ``--print_config`` prints the resolved config as YAML and stops
(that output is a valid ``--config`` file giving the same config).
"""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import functools
import inspect
import io
import math
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from commons.errors import ConfigError
from commons.io import write_text

T = TypeVar("T")
# The command name --help shows, when a front door (the medtok-qa console script) runs a module's main.
COMMAND_NAME: contextvars.ContextVar[str | None] = contextvars.ContextVar("COMMAND_NAME", default=None)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _CliValues(list):
    """The values one option got on the command line: one list of strings per occurrence
    (``--a x y --a z`` -> ``[["x", "y"], ["z"]]``); its field's type says how to read them."""


def _is_list_type(tp: Any) -> bool:
    return get_origin(tp) in (list, tuple)


def _from_cli(value: _CliValues, tp: Any, name: str) -> Any:
    """A list field gets every value of every occurrence (a single value may be comma-separated);
    any other field gets the last occurrence, which must hold one value."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value[-1] in (["none"], ["null"], ["None"]):
            return None
        if len(args) == 1:
            return _from_cli(value, args[0], name)
    if _is_list_type(tp):
        items: list[str] = []
        for occurrence in value:
            if len(occurrence) == 1:  # the comma form, "" = an empty list
                items += [v for v in occurrence[0].split(",") if v != ""]
            else:
                items += occurrence
        return _convert(items, tp, name)
    last = value[-1]
    if len(last) != 1:
        raise ConfigError(f"{name} takes one value, got {len(last)}: {' '.join(last)}")
    return _convert(last[0], tp, name)


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (a YAML value or a CLI string) to the annotated type ``tp``."""
    if isinstance(value, _CliValues):
        return _from_cli(value, tp, name)
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
        if isinstance(value, str):  # the command line: a YAML flow mapping, e.g. '{optim.epochs: 2}'
            try:
                value = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                value = None
        if not isinstance(value, dict):
            raise ConfigError(f"{name} expects a mapping (on the command line: '{{key: value, ...}}')")
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


SEED_MAX = 2**32 - 1  # numpy's and torch's seeding accept 0..2^32-1 (set_seed passes it to both)


def _check_seed(name: str, value: Any) -> None:
    """Every option named ``seed``, ``*_seed`` or ``seeds`` holds seeds in 0..2^32-1."""
    leaf = name.rsplit(".", 1)[-1]
    if not (leaf in ("seed", "seeds") or leaf.endswith("_seed")):
        return
    for seed in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(seed, int) and not 0 <= seed <= SEED_MAX:
            raise ConfigError(f"{name} must be a seed in 0..{SEED_MAX} (2^32-1), got {seed}")


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
            if isinstance(value, _CliValues):
                raise ConfigError(f"--{prefix}{key} is a group of options; set one as --{prefix}{key}.<name> value")
            kwargs[key] = from_dict(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _convert(value, tp, f"{prefix}{key}")
            _check_seed(f"{prefix}{key}", kwargs[key])
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


class PlainYamlLoader(yaml.SafeLoader):
    """YAML's safe subset without anchors and aliases: an alias "bomb" (a few lines referring to each
    other, billions of items once expanded) cannot exhaust memory. Tags outside the standard ones
    are refused too (SafeLoader has no constructor for them)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not accepted in config files; write the "
                "values out", event.start_mark)
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    return yaml.load(text, Loader=PlainYamlLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = safe_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping of option: value")
    return data


def _set_dotted(tree: dict[str, Any], dotted: str, values: list[str]) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"option --{dotted}: {p} is not a section")
    if not isinstance(tree.get(leaf), _CliValues):
        tree[leaf] = _CliValues()
    tree[leaf].append(values)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Help text of each field of dataclass ``cls``, from its source: ``metadata={"help": ...}``,
    else the comment on the field's line(s), else the comment lines right above it, else a string
    literal right after it. A comment documents one field only: one above a group would be read
    as the first field's."""
    docs = {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined where there is no source (e.g. interactively)
        return docs
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    body = ast.parse(source).body[0].body
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        first, last = node.lineno, node.end_lineno or node.lineno
        above, line = [], first - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        own = " ".join(comments[n] for n in range(first, last + 1) if n in comments)
        after = body[i + 1] if i + 1 < len(body) else None
        literal = (after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                   and isinstance(after.value.value, str) else "")
        docs.setdefault(node.target.id, own or " ".join(above) or " ".join(literal.split()))
    return {k: v for k, v in docs.items() if v}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return (" | ".join(_type_name(a) for a in args)) + " | none"
    if origin is Literal:
        return "one of " + ", ".join(str(c) if c != "" else '""' for c in get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name((get_args(tp) or (str,))[0])} (values, repeated or a,b)"
    return getattr(tp, "__name__", str(tp))


def _help_lines(cls: type, prefix: str = "") -> list[str]:
    lines = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"\n{prefix}{f.name}: {(tp.__doc__ or '').strip().splitlines()[0] if tp.__doc__ else ''}")
            lines += _help_lines(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        line = f"  --{prefix}{f.name} ({_type_name(tp)}; default: {default})"
        if callable(f.metadata.get("choices")):  # e.g. a registry of plug-ins, read at --help time
            line += f"  choices: {', '.join(f.metadata['choices']())}"
        lines.append(line)
        if docs.get(f.name):
            lines += textwrap.wrap(docs[f.name], 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


def config_help(cls: type, prog: str | None = None) -> str:
    """The ``--help`` text of a config dataclass."""
    doc = (cls.__doc__ or "").strip()
    head = (f"usage: {prog or 'command'} [--config FILE.yaml] [--option value ...] [--print_config]\n\n{doc}\n\n"
            "  --config FILE.yaml  options from a YAML file (repeatable; later files and --options win)\n"
            "  --print_config      print the resolved config as YAML (a valid --config file) and stop\n")
    return head + "\n".join(_help_lines(cls))


def underscore_flags(argv: list[str] | None) -> list[str]:
    """``argv`` with every ``--hyphen-flag`` spelled ``--hyphen_flag``, the one style of every command;
    the old spelling still works and says so once on stderr (values are left alone)."""
    out = []
    for arg in list(sys.argv[1:] if argv is None else argv):
        name, eq, value = arg.partition("=")
        if arg.startswith("--") and "-" in name[2:]:
            fixed = "--" + name[2:].replace("-", "_")
            print(f"note: {name} is spelled {fixed} (the hyphen spelling is deprecated)", file=sys.stderr)
            arg = fixed + eq + value
        out.append(arg)
    return out


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    """Parse ``--config FILE`` and ``--key value [value ...]`` / ``--key=value`` overrides into ``cls``."""
    argv = underscore_flags(argv)
    if "-h" in argv or "--help" in argv:
        print(config_help(cls, COMMAND_NAME.get() or prog))
        raise SystemExit(0)
    overrides: dict[str, Any] = {}
    data: dict[str, Any] = {}
    print_config = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --name value")
        key, eq, value = arg[2:].partition("=")
        values = [value] if eq else []
        while not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            i += 1
            values.append(argv[i])
        if key == "print_config":
            print_config = _convert(values[-1] if values else "true", bool, "--print_config")
        elif key == "config":
            if len(values) != 1:
                raise ConfigError("--config takes one YAML file (repeat --config for several)")
            data = _merge(data, load_yaml(values[0]))
        else:
            _set_dotted(overrides, key, values or ["true"])  # a bare flag switches a boolean on
        i += 1
    cfg = from_dict(cls, _merge(data, overrides))
    if print_config:
        print(config_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg


def first_difference(old: Any, new: Any, prefix: str = "", ignore: tuple[str, ...] = ("resume", "force", "report_to")
                     ) -> str | None:
    """``"optim.lr: 0.0002 -> 0.01"`` for the first setting that differs (top-level ``ignore`` keys
    say how to treat a folder or where to report, not what the run is), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if prefix == "" and key in ignore:
                continue
            diff = first_difference(old.get(key), new.get(key), f"{prefix}{key}.", ignore)
            if diff:
                return diff
        return None
    return None if old == new else f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


def with_defaults(cls: type, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the options it predates filled in at their defaults: a run saved before
    an option existed ran as that option's default does, so it still resumes."""
    try:
        defaults = to_dict(cls())
    except TypeError:  # a config without defaults for every field: compare as saved
        return saved

    def fill(default: Any, old: Any) -> Any:
        if isinstance(default, dict) and isinstance(old, dict):
            return {**{k: v for k, v in default.items() if k not in old},
                    **{k: fill(default.get(k), v) for k, v in old.items()}}
        return old

    return fill(defaults, saved)


def config_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what ``--print_config`` prints and runs save)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    write_text(path, config_yaml(cfg))
