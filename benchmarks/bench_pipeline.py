"""Time every stage of the main command from scratch (the numbers the README quotes).

    python benchmarks/bench_pipeline.py                          # quick demo, fresh caches
    python benchmarks/bench_pipeline.py --pipeline configs/pipeline_full.yaml --fresh_cache false
    python benchmarks/bench_pipeline.py --timings runs/pipeline/timings.json   # only format

Runs ``recipes.pipeline`` with every stage forced into its own output folder. With ``fresh_cache``
(default) ``$MEDTOK_CACHE_DIR`` points at an empty temporary folder, so vocabulary, graph, text
embeddings and the base model are built as on a fresh clone. Writes ``<output>/bench.json`` (stage
timings plus machine facts) and prints a Markdown table.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commons.config import from_dict, load_yaml, parse_config  # noqa: E402
from commons.errors import cli_entry  # noqa: E402
from commons.io import read_json, write_json  # noqa: E402
from commons.machine import machine_facts  # noqa: E402


@dataclass
class BenchConfig:
    """Time the end-to-end pipeline stage by stage."""

    pipeline: str = ""  # pipeline config file (default: the embedded quick defaults)
    output: str = "runs/bench_pipeline"
    fresh_cache: bool = True
    timings: str = ""  # format an existing timings.json instead of running


def markdown(timings: dict) -> str:
    rows = ["| stage | wall s | CPU s |", "|---|---|---|"]
    for stage in timings["stages"]:
        if stage["skipped"]:
            rows.append(f"| {stage['name']} | reused | |")
        else:
            rows.append(f"| {stage['name']} | {stage['seconds']:.0f} | {stage.get('cpu_seconds', 0):.0f} |")
    cpu = sum(s.get("cpu_seconds", 0) for s in timings["stages"])
    rows.append(f"| **total** | **{timings['total_seconds']:.0f}** ({timings['total_seconds'] / 60:.1f} min) "
                f"| {cpu:.0f} |")
    groups = "  ".join(f"{g}: {t:.0f} s" for g, t in timings.get("by_group", {}).items())
    return "\n".join(rows) + (f"\n\nBy stage group: {groups}" if groups else "")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, prog="python benchmarks/bench_pipeline.py")
    if cfg.timings:
        print(markdown(read_json(cfg.timings)))
        return
    from recipes.pipeline import PipelineConfig, run_pipeline

    pipe = from_dict(PipelineConfig, load_yaml(cfg.pipeline)) if cfg.pipeline else PipelineConfig()
    pipe = dataclasses.replace(pipe, output=cfg.output, force=["all"], dry_run=False)
    if cfg.fresh_cache:
        os.environ["MEDTOK_CACHE_DIR"] = tempfile.mkdtemp(prefix="medtok-bench-cache-")
    timings = run_pipeline(pipe)
    result = {"timings": timings, "machine": machine_facts(), "fresh_cache": cfg.fresh_cache,
              "pipeline_config": cfg.pipeline or "embedded defaults (configs/pipeline_quick.yaml)"}
    write_json(Path(cfg.output) / "bench.json", result)
    print("\n" + markdown(timings))
    print(f"\nwritten: {Path(cfg.output) / 'bench.json'}")


if __name__ == "__main__":
    main()
