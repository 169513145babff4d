"""What a measurement ran on: CPU features that decide matmul speed per dtype, cores, versions, load.

Wall times differ several-fold between machines of the same kind (native bf16 or AVX2 only) and
with the neighbours' load, so every published figure carries these facts beside it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "fma"}


def cpu_flags() -> list[str]:
    """The CPU features that decide the matmul speed of each dtype."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(_FLAGS & set(flags))


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                platform.processor())


def machine_facts() -> dict:
    import torch

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "cpu_flags": cpu_flags(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
