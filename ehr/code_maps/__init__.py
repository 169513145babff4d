"""MEDS code string -> MedTok ``SYSTEM:code``: one mapping plug-in per data source, registered by name.

Importing this package imports every module in it, so a new ``ehr/code_maps/<source>.py`` that
decorates its class with :func:`register` is available to ``medtok-qa ehr data --source <name>``.
"""

from __future__ import annotations

import importlib
import pkgutil

from ehr.code_maps.base import CodeMap, Mapped, MappingReport, get_code_map, map_codes, register, source_names

__all__ = ["CodeMap", "Mapped", "MappingReport", "get_code_map", "map_codes", "register", "source_names"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
