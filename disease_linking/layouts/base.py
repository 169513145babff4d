"""Question layouts as plug-ins: what a layout is, its registry, and the loader every entry point uses.

A layout says how the records of one input become questions: a file layout parses the records of
a .json/.jsonl file, a hub layout maps the rows of a Hugging Face hub dataset (or of a local export
of it) to linked records. One class per file in ``disease_linking/layouts/``, registered by name
with :func:`register`. Every record still goes through the one validator of
``disease_linking.questions`` (schema, checks, skipped reasons), so a layout only maps fields.

A layout also owns its dataset policy, so a new dataset is one file: the keys by which ``auto``
recognises its records (:func:`detect_layout`), the difficulty tiers it carries and the tier
fine-tuning trains on by default (:func:`default_tier`), the question file of the data directory
read when none is given (:func:`question_file`), and how its questions split into training and
held-out (:meth:`Layout.split`, by option set unless it says otherwise). ``auto`` takes the
policy of the layout marked ``auto_default`` (MedDDx).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

from commons.errors import ConfigError, UserError
from commons.io import cache_dir
from commons.registry import Registry
from disease_linking.questions import (
    MCQFormatError,
    MCQItem,
    items_dataset,
    load_mcq,
    parse_linked,
    skip_summary,
    validate_records,
)
from disease_linking.splits import split_by_option_set

AUTO = "auto"


class Layout:
    """Base class. Subclasses set the class attributes and override ``parse`` (and ``to_record``)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line, shown by --help
    keys: ClassVar[tuple[str, ...]] = ()  # keys every record of the layout has (checked before parsing)
    hub_id: ClassVar[str | None] = None  # a hub dataset read when no file is given (network, opt-in)
    tiers: ClassVar[tuple[str, ...]] = ()  # difficulty tiers its questions carry (of questions.TIERS); () = none
    default_tier: ClassVar[str] = ""  # tier fine-tuning trains on unless --data.tier says ("" = every question)
    data_file: ClassVar[str | None] = None  # file of the data directory read when no question file is given
    auto_default: ClassVar[bool] = False  # the layout whose policy `auto` follows (one layout at most)
    split_by: ClassVar[str] = "option_set"  # what :meth:`split` keeps whole (recorded in split.json)

    def __init__(self, flag_prefix: str = "--"):
        self.flag_prefix = flag_prefix  # how errors name the options: --layout (eval), --data.layout (training)

    def parse(self, raw: dict, item_id: str) -> MCQItem:
        """One record as a validated item (raises MCQFormatError)."""
        raise NotImplementedError

    def checked_parse(self, raw: dict, item_id: str) -> MCQItem:
        missing = [k for k in self.keys if k not in raw]
        if missing:
            # A file of another layout: say which, instead of a KeyError deep in the parser.
            raise MCQFormatError(f"{item_id}: not a {self.name} record (no {missing[0]!r}; keys "
                                 f"{', '.join(sorted(raw)) or 'none'}); pass {self.flag_prefix}layout auto or the file's layout")
        return self.parse(raw, item_id)

    def load(self, path: Path | None, skip_invalid: bool, allow_network: bool, split: str
             ) -> tuple[list[MCQItem], list[str]]:
        if path is None:
            raise ConfigError(f"layout {self.name} reads a question file; pass one")
        return load_mcq(path, skip_invalid, parse=self.checked_parse)

    def split(self, items: list[MCQItem], val_fraction: float, seed: int) -> tuple[list[MCQItem], list[MCQItem]]:
        """(train, held-out) of the layout's questions; by default whole option-set groups are held
        out (questions sharing an option set would leak each other's answer candidates)."""
        return split_by_option_set(items, val_fraction, seed)


class HubLayout(Layout):
    """A hub dataset's rows, mapped to linked records by ``to_record``."""

    def to_record(self, row: dict[str, Any], item_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, raw: dict, item_id: str) -> MCQItem:
        return parse_linked(self.to_record(raw, item_id), item_id)

    def load(self, path: Path | None, skip_invalid: bool, allow_network: bool, split: str
             ) -> tuple[list[MCQItem], list[str]]:
        if path is not None:  # a local export of the hub dataset, one row per record
            return super().load(path, skip_invalid, allow_network, split)
        return self.from_rows(self.download(split, allow_network), f"{self.hub_id} ({split})", skip_invalid)

    def from_rows(self, rows, source: str, skip_invalid: bool = False) -> tuple[list[MCQItem], list[str]]:
        """Validated items of hub rows (a ``datasets.Dataset`` or any iterable of dicts)."""
        return validate_records(rows, source, self.name, skip_invalid, self.checked_parse)

    def download(self, split: str, allow_network: bool):
        if not allow_network:
            raise ConfigError(f"layout {self.name} downloads {self.hub_id} from the Hugging Face hub; pass "
                              f"{self.flag_prefix}allow_network true to allow it, or a local copy of the dataset as "
                              "the question file")
        from datasets import load_dataset

        try:
            # Under the project's cache, not ~/.cache/huggingface: one place to find and delete.
            return load_dataset(self.hub_id, split=split, cache_dir=str(cache_dir() / "datasets"))
        except (OSError, ConnectionError, ValueError) as err:
            raise UserError(f"cannot load {self.hub_id} split {split!r} from the hub: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


_REGISTRY = Registry("layout", reserved=(AUTO,))
register = _REGISTRY.register  # class decorator of a layout file


def layout_names() -> list[str]:
    """``auto`` (each record recognised by its keys) and the registered layouts, sorted."""
    return [AUTO, *sorted(_REGISTRY)]


def get_layout(name: str, flag_prefix: str = "--") -> Layout | None:
    """The layout named ``name``; None for ``auto``."""
    if name == AUTO:
        return None
    try:
        return _REGISTRY[name](flag_prefix)
    except KeyError:
        raise ConfigError(f"unknown question layout {name!r}; registered: {', '.join(layout_names())}") from None


def policy(name: str, flag_prefix: str = "--") -> Layout:
    """The layout whose dataset policy applies to ``--layout name``: the layout itself, or for
    ``auto`` the one marked ``auto_default``."""
    chosen = get_layout(name, flag_prefix)
    if chosen is not None:
        return chosen
    defaults = [cls for cls in _REGISTRY.values() if cls.auto_default]
    if len(defaults) != 1:
        raise TypeError(f"exactly one layout must set auto_default, found {len(defaults)}")
    return defaults[0](flag_prefix)


def default_tier(layout: str) -> str:
    """The tier fine-tuning trains on when ``--data.tier`` is not given."""
    return policy(layout).default_tier


def question_file(file: str | None, layout: str, data_dir: str | None = None) -> Path | None:
    """The question file to read: the user's, else the layout's file in the data directory (MedDDx
    for ``meddx`` and ``auto``); None otherwise (a hub layout reads its hub dataset, a file layout
    says it needs a file)."""
    if file:
        return Path(file)
    rel = policy(layout).data_file
    if rel:
        from commons.datadir import data_file

        return data_file(rel, data_dir)
    return None


def detect_layout(raw: Any, item_id: str) -> Layout:
    """The layout of one record under ``auto``: the registered layout whose ``keys`` the record has
    (the most specific, i.e. the one with most keys, when several match)."""
    if not isinstance(raw, dict):
        raise MCQFormatError(f"{item_id}: expected a JSON object, got {type(raw).__name__}")
    matches = sorted((cls for cls in _REGISTRY.values() if cls.keys and all(k in raw for k in cls.keys)),
                     key=lambda cls: (-len(cls.keys), cls.name))
    if not matches:
        known = "; ".join(f"{' + '.join(map(repr, cls.keys))} ({cls.name})" for cls in
                          sorted(_REGISTRY.values(), key=lambda c: c.name) if cls.keys)
        raise MCQFormatError(f"{item_id}: unknown layout (keys {', '.join(sorted(raw)) or 'none'}); expected {known}")
    return matches[0]()


def parse_auto(raw: Any, item_id: str) -> MCQItem:
    """One record of any registered layout, recognised by its keys (``--layout auto``)."""
    return detect_layout(raw, item_id).parse(raw, item_id)


def _load(path: str | Path | None, layout: str, skip_invalid: bool, allow_network: bool, split: str,
          flag_prefix: str) -> tuple[list[MCQItem], list]:
    chosen = get_layout(layout, flag_prefix)
    path = None if path in (None, "") else Path(path)
    if chosen is None:
        if path is None:
            raise ConfigError("layout auto reads a question file; pass one, or a hub layout "
                              f"({', '.join(n for n in layout_names() if n != AUTO and _REGISTRY[n].hub_id)})")
        return load_mcq(path, skip_invalid, parse=parse_auto)
    return chosen.load(path, skip_invalid, allow_network, split)


def load_question_dataset(path: str | Path | None, layout: str = AUTO, skip_invalid: bool = False,
                          allow_network: bool = False, split: str = "train", flag_prefix: str = "--"):
    """(questions as a ``datasets.Dataset``, skipped reasons) from a file or a hub layout.

    ``auto`` recognises every record of the file by its keys (MedDDx, the authors' layout,
    linked JSONL); a named layout reads every record as that layout. ``split`` is the hub split
    read by a hub layout when no file is given; ``flag_prefix`` is how errors name the options.
    """
    items, skipped = _load(path, layout, skip_invalid, allow_network, split, flag_prefix)
    return items_dataset(items), skipped


def load_question_items(path: str | Path | None, layout: str = AUTO, skip_invalid: bool = False,
                        allow_network: bool = False, split: str = "train",
                        flag_prefix: str = "--") -> tuple[list[MCQItem], list]:
    """(questions, skipped reasons) read as :func:`load_question_dataset` reads them (without the
    Arrow round trip), the skipped ones summarised on stderr: what every entry point that reads
    questions does first."""
    items, skipped = _load(path, layout, skip_invalid, allow_network, split, flag_prefix)
    if skipped:
        print(skip_summary(skipped), file=sys.stderr)
    return items, skipped
