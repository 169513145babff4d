"""Build and cache the vocabulary, the knowledge graph and the per-code subgraph index.

    medtok-qa build [--data_dir D] [--kg_csv kg.csv] [--user_codes codes.csv]
                                [--subgraph.max_nodes 32] [--kg.skip_sources ddi] [--rebuild]

Everything is cached under ``cache_dir()`` (``$MEDTOK_CACHE_DIR`` or ``~/.cache/medtok-qa``) keyed
by a hash of the inputs, so a second run only loads. Prints a summary: nodes per type, edges per
relation, codes per system, and the share of each system's codes whose subgraph holds more than
the code itself (and the share that reaches a non-code KG node).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from commons.config import save_config
from commons.errors import ConfigError
from medtok_core.graph import (
    NODE_TYPES,
    KGConfig,
    KnowledgeGraph,
    build_knowledge_graph,
    kg_csv_counts,
    kg_csv_summary,
    knowledge_graph_dir,
)
from medtok_core.subgraph import SubgraphConfig, SubgraphIndex
from medtok_core.vocab import VocabConfig, load_or_build_vocab


@dataclass
class BuildConfig:
    """Build (or load from the cache) the code vocabulary, knowledge graph and subgraph index."""

    # Shortcuts for kg.data_dir, kg.kg_csv and vocab.user_codes.
    data_dir: str | None = None
    kg_csv: str | None = None  # shortcut for kg.kg_csv
    user_codes: str | None = None  # shortcut for vocab.user_codes
    # Ignore the caches and rebuild everything.
    rebuild: bool = False
    # Show progress bars.
    progress: bool = True
    vocab: VocabConfig = field(default_factory=VocabConfig)
    kg: KGConfig = field(default_factory=KGConfig)
    subgraph: SubgraphConfig = field(default_factory=SubgraphConfig)

    def __post_init__(self):
        fold_shortcuts(self)


def _pick(short, nested, name):
    if short is not None and nested is not None and str(short) != str(nested):
        raise ConfigError(f"--{name} and its nested form disagree ({short} vs {nested}); give only one")
    return short if short is not None else nested


def fold_shortcuts(cfg: BuildConfig) -> None:
    """Copy the top-level shortcuts into the nested configs (a conflict is an error), in place, so
    ``--print_config`` and the saved config show what runs (``vocab.user_codes`` set by ``--user_codes``)."""
    cfg.kg = dataclasses.replace(cfg.kg, data_dir=_pick(cfg.data_dir, cfg.kg.data_dir, "data_dir"),
                                 kg_csv=_pick(cfg.kg_csv, cfg.kg.kg_csv, "kg_csv"))
    cfg.vocab = dataclasses.replace(cfg.vocab, user_codes=_pick(cfg.user_codes, cfg.vocab.user_codes, "user_codes"))


def resolve(cfg: BuildConfig) -> BuildConfig:
    """The config that runs: shortcuts folded in, caches off under ``rebuild``."""
    cfg = dataclasses.replace(cfg)  # runs __post_init__ (fold_shortcuts) on a copy
    if cfg.rebuild:
        cfg.kg, cfg.vocab = dataclasses.replace(cfg.kg, use_cache=False), dataclasses.replace(cfg.vocab, use_cache=False)
    return cfg


def run(cfg: BuildConfig):
    """Build or load everything; returns (vocab, kg, index, timings, graph folder)."""
    cfg = resolve(cfg)
    times = {}
    t = time.perf_counter()
    vocab = load_or_build_vocab(cfg.vocab)
    times["vocabulary"] = time.perf_counter() - t
    t = time.perf_counter()
    kg = build_knowledge_graph(vocab, cfg.kg, progress=cfg.progress)
    times["knowledge graph"] = time.perf_counter() - t
    folder = knowledge_graph_dir(vocab, cfg.kg)
    t = time.perf_counter()
    sg = cfg.subgraph
    index = SubgraphIndex.load_or_build(kg, folder, sg.k_hops, sg.max_nodes, sg.fanout,
                                        use_cache=not cfg.rebuild, progress=cfg.progress)
    times["subgraph index"] = time.perf_counter() - t
    save_config(cfg, folder / "build_config.yaml")
    return vocab, kg, index, times, folder


def kg_csv_line(cfg: BuildConfig) -> str | None:
    """What the user's kg.csv added to the graph, for the build summary (None without one)."""
    if not cfg.kg.kg_csv:
        return None
    counts = kg_csv_counts(cfg.kg)
    if counts is None:
        return (f"kg.csv: {cfg.kg.kg_csv} merged; this graph was cached before the edges were counted "
                "(--rebuild true counts them)")
    return kg_csv_summary(counts, cfg.kg.kg_csv_mode)


def subgraph_coverage(vocab, kg: KnowledgeGraph, index: SubgraphIndex) -> dict[str, dict[str, float]]:
    """Per system: codes, share with a subgraph beyond the code, share reaching a non-code node."""
    sizes = index.num_nodes_of()
    code_type = NODE_TYPES.index("code")
    non_code = kg.node_type[index.nodes.astype(np.int64)] != code_type
    owner = np.repeat(np.arange(len(index)), sizes)
    reaches_kg = np.bincount(owner, weights=non_code, minlength=len(index)) > 0
    systems = vocab.table.system.to_numpy()
    out = {}
    for system in sorted(set(systems)):
        m = systems == system
        out[system] = {"codes": int(m.sum()), "nontrivial": float((sizes[m] > 1).mean()),
                       "reaches_kg": float(reaches_kg[m].mean()), "mean_nodes": float(sizes[m].mean())}
    return out


def summary_text(vocab, kg: KnowledgeGraph, index: SubgraphIndex, times: dict, folder) -> str:
    lines = [f"knowledge graph: {kg.num_nodes:,} nodes, {kg.num_edges // 2:,} edges (stored in both directions)"]
    lines.append("nodes per type:")
    lines += [f"  {t:<12} {n:>10,}" for t, n in kg.nodes_per_type().items()]
    lines.append("edges per relation (directed count):")
    lines += [f"  {r:<28} {n:>10,}" for r, n in sorted(kg.edges_per_relation().items(), key=lambda x: -x[1])]
    lines.append(f"subgraphs: k_hops={index.k_hops}, max_nodes={index.max_nodes}, fanout={index.fanout}")
    lines.append(f"  {'system':<10} {'codes':>8} {'>1 node':>8} {'reaches KG':>11} {'mean nodes':>11}")
    for system, c in subgraph_coverage(vocab, kg, index).items():
        lines.append(f"  {system:<10} {c['codes']:>8,} {c['nontrivial']:>8.1%} {c['reaches_kg']:>11.1%} "
                     f"{c['mean_nodes']:>11.1f}")
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    lines.append(f"cached in {folder}")
    return "\n".join(lines)
