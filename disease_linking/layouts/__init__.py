"""Question layouts, one file each, registered by name (see ``base.py``).

Importing this package imports every module in it, so a new ``disease_linking/layouts/<name>.py``
that decorates its class with :func:`register` is accepted by ``--layout`` (training, evaluation, linking)
and listed by ``--help`` without touching anything else.
"""

from __future__ import annotations

import importlib
import pkgutil

from disease_linking.layouts.base import (
    AUTO,
    HubLayout,
    Layout,
    default_tier,
    detect_layout,
    get_layout,
    layout_names,
    load_question_dataset,
    load_question_items,
    parse_auto,
    policy,
    question_file,
    register,
)

__all__ = ["AUTO", "HubLayout", "Layout", "default_tier", "detect_layout", "get_layout", "layout_names",
           "load_question_dataset", "load_question_items", "parse_auto", "policy", "question_file", "register"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
