"""Prefix methods, one file each, registered by name (see ``base.py``).

Importing this package imports every module in it, so a new ``qa/prefix_methods/<name>.py``
that decorates its class with :func:`register` is picked up by training, scoring, the pipeline,
the report and ``--help`` without touching anything else.
"""

from __future__ import annotations

import importlib
import pkgutil

from qa.prefix_methods.base import (
    STEM_TAG,
    ItemPrefix,
    PrefixMethod,
    get_method,
    method_names,
    register,
    unregister,
)

__all__ = ["STEM_TAG", "ItemPrefix", "PrefixMethod", "get_method", "method_names", "register", "unregister"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
