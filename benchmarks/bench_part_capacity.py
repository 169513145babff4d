"""How much of the descriptions' parent geometry one MedTok part (``model.dim`` dimensions) can hold.

    python benchmarks/bench_part_capacity.py --medtok_config configs/medtok_full.yaml \\
        --output docs/results/medtok_ablations/full_part_capacity.json

Parent retrieval MRR (:func:`medtok_core.quality.parent_observed`, the same queries as
``python -m recipes.medtok_quality``) of the frozen description vectors MedTok's text branch reads,
and of three summaries of them, ``--dim`` wide (default: ``model.dim``, one part):

- ``pca``: their leading principal axes (the best *linear* summary);
- ``distilled_random``: a small MLP (Dt -> ``--hidden`` -> dim) trained with MedTok's listwise description
  distillation (:func:`medtok_core.losses.similarity_distill` at ``loss.distill_temperature``),
  batches of ``optim.batch_size`` random codes, one epoch of steps (as the benchmark's MedTok);
- ``distilled_hierarchy``: the same, batches of hierarchy blocks (``optim.hierarchy_block``, or
  ``--block``): codes meet their parent and siblings in the batch.

No MedTok model is trained: this bounds what the text-specific part could reach at its width with
each batch composition.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commons.config import parse_config, require_range  # noqa: E402
from commons.errors import cli_entry  # noqa: E402
from commons.io import write_json  # noqa: E402
from commons.machine import machine_facts  # noqa: E402
from medtok_core.losses import similarity_distill  # noqa: E402
from medtok_core.quality import parent_observed  # noqa: E402
from medtok_core.train import TrainConfig, epoch_order, hierarchy_blocks, prepare_data  # noqa: E402
from recipes.medtok_quality import description_vectors, principal_components  # noqa: E402


@dataclass
class BenchConfig:
    """Parent retrieval of the description vectors at one part's width."""

    medtok_config: str = "configs/medtok_full.yaml"  # MedTok config: codes, dim, batch size, temperature
    output: str = "runs/bench_part_capacity.json"
    dim: int = 0  # width of the summaries (0: the config's model.dim, one part)
    hidden: int = 256  # hidden width of the distilled MLP (MedTok's text MLP: model.text_hidden or dim)
    block: int = 32  # hierarchy block when the config's optim.hierarchy_block is 0
    max_parent_queries: int = 5000  # as recipes.medtok_quality
    seed: int = 0
    num_threads: int = 2

    def __post_init__(self):
        require_range(self, "dim", 0)
        for name in ("hidden", "block", "max_parent_queries", "num_threads"):
            require_range(self, name, 1)


def distilled(x: torch.Tensor, dim: int, hidden: int, order: torch.Tensor, batch_size: int, temperature: float,
              seed: int) -> torch.Tensor:
    """[n, dim]: an MLP trained one epoch (rows in ``order``) to keep the batch-wise similarity
    ranking of ``x``."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.GELU(), nn.Linear(hidden, dim))
    opt = torch.optim.AdamW(mlp.parameters(), lr=2e-3)
    for s in range(math.ceil(len(x) / batch_size)):
        rows = order[s * batch_size:(s + 1) * batch_size]
        loss = similarity_distill(mlp(x[rows]), x[rows], temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.cat([mlp(chunk) for chunk in x.split(8192)])


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, prog="benchmarks/bench_part_capacity.py")
    torch.set_num_threads(cfg.num_threads)
    tcfg = parse_config(TrainConfig, ["--config", cfg.medtok_config])
    data = prepare_data(tcfg.data, progress=True)
    x, vocab, dim = description_vectors(data), data.vocab, cfg.dim or tcfg.model.dim
    block = tcfg.optim.hierarchy_block or cfg.block
    temperature = tcfg.loss.distill_temperature

    def distilled_over(blocks):
        order = epoch_order(len(x), cfg.seed, 0, blocks)
        return distilled(x, dim, cfg.hidden, order, tcfg.optim.batch_size, temperature, cfg.seed)

    summaries = {
        "raw_text": lambda: x,
        "pca": lambda: principal_components(x, dim),
        "distilled_random": lambda: distilled_over(None),
        "distilled_hierarchy": lambda: distilled_over(hierarchy_blocks(vocab, block)),
    }
    results = {"medtok_config": cfg.medtok_config, "dim": dim, "text_dim": x.shape[1], "hidden": cfg.hidden,
               "n_codes": len(x), "batch_size": tcfg.optim.batch_size, "hierarchy_block": block,
               "distill_temperature": temperature, "parent_mrr": {}, "seconds": {}, "machine": machine_facts()}
    for name, make in summaries.items():
        t = time.perf_counter()
        obs = parent_observed(vocab, make(), cfg.max_parent_queries, cfg.seed)
        results["parent_mrr"][name] = round(obs.value, 4)
        results["seconds"][name] = round(time.perf_counter() - t, 1)
        print(f"{name:>20}: parent MRR {obs.value:.4f} ({len(obs.rr)} queries)", flush=True)
    write_json(Path(cfg.output), results)
    print(f"wrote {cfg.output}")


if __name__ == "__main__":
    main()
