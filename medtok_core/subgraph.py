"""Bounded k-hop subgraph of every vocabulary code, precomputed into flat CSR arrays.

    index = SubgraphIndex(kg, k_hops=2, max_nodes=32, fanout=10)
    batch = index.batch(code_ids, drop_edge_p=0.1, rng=0)     # SubgraphBatch of torch tensors

Selection (deterministic, vectorized over all codes at once, no per-code Python):

- Node 0 is the code's own node. Each hop expands every node of the previous hop to at most
  ``fanout`` neighbours (so a drug with thousands of interactions costs no more than a leaf), and
  new nodes are admitted until the subgraph holds ``max_nodes``.
- Each node's neighbour list is ordered once for the whole graph: round-robin over relations (the
  first neighbour of every relation, then the second, ...), relations in :data:`RELATION_PRIORITY`
  order, and within a relation low-degree (more specific) neighbours first, ties by node id. So a
  code sees its parent, the diseases or drugs it maps to, and its GEM partners before its children.
- Candidates of a hop are admitted round-robin over the expanded nodes as well (every node's
  first neighbour, then every node's second, ...), so one hub cannot fill the budget alone.
- Edges: every pair found while expanding a selected node's first ``fanout`` neighbours whose two
  ends are both selected (the last hop is expanded for edges only), stored once per pair and
  emitted in both directions by :meth:`SubgraphIndex.batch`, as PyG's sampled subgraphs are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from commons.errors import ConfigError, DataFileError
from commons.io import atomic_path

FORMAT_VERSION = 1

# Most informative first; relations not listed follow in name order.
RELATION_PRIORITY = (
    "code_is_a", "code_disease", "code_drug", "code_phenotype", "code_gene", "code_side_effect",
    "icd9_icd10_gem", "code_disease_inherited", "code_drug_inherited", "code_phenotype_inherited",
    "indication", "disease_protein", "drug_protein", "disease_phenotype_positive", "disease_disease",
    "contraindication", "off-label use", "phenotype_protein", "drug_side_effect", "drug_effect",
    "phenotype_phenotype", "drug_drug", "code_has_child",
)


@dataclass
class SubgraphConfig:
    """How each code's subgraph is cut from the knowledge graph."""

    # Hops from the code's node.
    k_hops: int = 2
    # Node cap per subgraph, the code's own node included.
    max_nodes: int = 32
    # Neighbours taken per expanded node (caps hubs such as drugs with thousands of interactions).
    fanout: int = 10


@dataclass
class SubgraphBatch:
    """A PyG-style batch of code subgraphs (all torch tensors except ``num_graphs``).

    ``center`` indexes into the batch's nodes (the node offset of each graph, since node 0 of every
    subgraph is the code itself); ``edge_index`` is local to the batch, offset per graph as in PyG.
    """

    node_ids: torch.Tensor    # [N] global KG node ids
    node_type: torch.Tensor   # [N]
    edge_index: torch.Tensor  # [2, E]
    edge_type: torch.Tensor   # [E]
    batch: torch.Tensor       # [N] graph index of each node
    center: torch.Tensor      # [B]
    num_graphs: int

    def to(self, device) -> SubgraphBatch:
        return SubgraphBatch(*(t.to(device) for t in (self.node_ids, self.node_type, self.edge_index,
                                                       self.edge_type, self.batch, self.center)), self.num_graphs)


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each pair, without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(total, dtype=np.int64)


def _group_rank(sorted_groups: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input grouped/sorted)."""
    n = len(sorted_groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    idx = np.arange(n, dtype=np.int64)
    return idx - np.maximum.accumulate(np.where(start, idx, 0))


def ordered_neighbours(edge_index: np.ndarray, edge_type: np.ndarray, relations: list[str],
                       num_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, neighbour, edge type) with each node's neighbours in preference order (module doc)."""
    src, dst = edge_index[0].astype(np.int64), edge_index[1].astype(np.int64)
    deg = np.bincount(src, minlength=num_nodes)
    order_of = {r: i for i, r in enumerate(RELATION_PRIORITY)}
    rest = sorted(r for r in relations if r not in order_of)
    prio_of_rel = np.array([order_of[r] if r in order_of else len(RELATION_PRIORITY) + rest.index(r)
                            for r in relations], dtype=np.int64)
    prio = prio_of_rel[edge_type.astype(np.int64)]
    first = np.lexsort((dst, deg[dst], prio, src))             # by src, relation, degree, id
    rr = _group_rank(src[first] * (int(prio_of_rel.max(initial=0)) + 1) + prio[first])
    rank = np.empty_like(rr)
    rank[first] = rr
    order = np.lexsort((dst, deg[dst], prio, rank, src))       # round-robin over relations
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(deg)
    return indptr, dst[order], edge_type[order].astype(np.int16)


def _expand(seed: np.ndarray, node: np.ndarray, indptr, nbr, etype, fanout: int):
    """First ``fanout`` neighbours of each (seed, node): seed, parent position, neighbour, its position, type."""
    start = indptr[node]
    count = np.minimum(indptr[node + 1] - start, fanout)
    idx = _ragged_arange(start, count)
    which = np.repeat(np.arange(len(node)), count)
    pos = idx - np.repeat(start, count)
    return seed[which], which, nbr[idx], pos, etype[idx]


def _select_chunk(centers: np.ndarray, indptr, nbr, etype, n_nodes: int, k_hops: int, max_nodes: int,
                  fanout: int):
    """Selected nodes (seed, node, rank) and edges (seed, local u, local v, type) for a chunk of centers."""
    n_seeds = len(centers)
    sel_seed = np.arange(n_seeds, dtype=np.int64)
    sel_node = centers.astype(np.int64)
    sel_rank = np.zeros(n_seeds, dtype=np.int64)
    count = np.ones(n_seeds, dtype=np.int64)
    front_seed, front_node, front_rank = sel_seed, sel_node, sel_rank
    found_edges = []
    for hop in range(k_hops + 1):
        if len(front_seed) == 0:
            break
        s, parent, v, pos, t = _expand(front_seed, front_node, indptr, nbr, etype, fanout)
        found_edges.append((s, front_node[parent], v, t))
        if hop == k_hops:
            break  # the last expansion only contributes edges among selected nodes
        # Round-robin over expanded nodes: by seed, then neighbour position, then the parent's rank.
        order = np.lexsort((front_rank[parent], pos, s))
        s, v = s[order], v[order]
        key = s * n_nodes + v
        _, first = np.unique(key, return_index=True)
        first.sort()
        s, v, key = s[first], v[first], key[first]
        new = ~np.isin(key, sel_seed * n_nodes + sel_node)
        s, v = s[new], v[new]
        within = _group_rank(s)
        keep = within < (max_nodes - count[s])
        s, v, within = s[keep], v[keep], within[keep]
        rank = count[s] + within
        count += np.bincount(s, minlength=n_seeds)
        sel_seed, sel_node, sel_rank = (np.concatenate([sel_seed, s]), np.concatenate([sel_node, v]),
                                        np.concatenate([sel_rank, rank]))
        front_seed, front_node, front_rank = s, v, rank

    # Local index of every selected (seed, node) via a sorted key table.
    keys = sel_seed * n_nodes + sel_node
    key_order = np.argsort(keys)
    sorted_keys, sorted_rank = keys[key_order], sel_rank[key_order]

    def local(seed, node):
        k = seed * n_nodes + node
        at = np.minimum(np.searchsorted(sorted_keys, k), len(sorted_keys) - 1)
        hit = sorted_keys[at] == k
        return np.where(hit, sorted_rank[at], -1)

    es = np.concatenate([e[0] for e in found_edges])
    eu = local(es, np.concatenate([e[1] for e in found_edges]))
    ev = local(es, np.concatenate([e[2] for e in found_edges]))
    et = np.concatenate([e[3] for e in found_edges]).astype(np.int64)
    ok = (eu >= 0) & (ev >= 0) & (eu != ev)
    es, eu, ev, et = es[ok], eu[ok], ev[ok], et[ok]
    # One row per unordered pair, oriented low -> high local index (the type stays that of u -> v,
    # with the reverse type when the pair was found from the other end).
    flip = eu > ev
    lo, hi = np.where(flip, ev, eu), np.where(flip, eu, ev)
    pair = (es * max_nodes + lo) * max_nodes + hi
    _, first = np.unique(pair, return_index=True)  # sorted by (seed, lo, hi)
    edges = (es[first], lo[first], hi[first], et[first], flip[first])
    node_order = np.lexsort((sel_rank, sel_seed))
    return (sel_seed[node_order], sel_node[node_order]), edges


class SubgraphIndex:
    """Per-code subgraphs as flat CSR arrays; :meth:`batch` assembles a :class:`SubgraphBatch`."""

    def __init__(self, kg, k_hops: int = 2, max_nodes: int = 32, fanout: int = 10, chunk: int = 8192,
                 progress: bool = False, _arrays: dict | None = None):
        if k_hops < 0 or max_nodes < 1 or fanout < 1 or max_nodes > 32767:
            raise ConfigError("subgraph settings need k_hops >= 0, 1 <= max_nodes <= 32767 and fanout >= 1")
        self.k_hops, self.max_nodes, self.fanout = int(k_hops), int(max_nodes), int(fanout)
        self.node_type_table = torch.as_tensor(np.asarray(kg.node_type, dtype=np.int64))
        self.reverse_type = _reverse_types(kg.relations)
        if _arrays is not None:
            self.__dict__.update(_arrays)
        else:
            self._build(kg, chunk, progress)

    def _build(self, kg, chunk: int, progress: bool) -> None:
        from tqdm.auto import tqdm

        n_nodes = kg.num_nodes
        indptr, nbr, etype = ordered_neighbours(kg.edge_index, kg.edge_type, kg.relations, n_nodes)
        centers = np.asarray(kg.code_node, dtype=np.int64)
        nodes, node_counts, e_u, e_v, e_t, edge_counts = [], [], [], [], [], []
        for lo in tqdm(range(0, len(centers), chunk), desc="subgraphs", unit="chunk", disable=not progress,
                       leave=False):
            c = centers[lo:lo + chunk]
            (seed, node), (es, u, v, t, flip) = _select_chunk(c, indptr, nbr, etype, n_nodes, self.k_hops,
                                                              self.max_nodes, self.fanout)
            nodes.append(node.astype(np.int32))
            node_counts.append(np.bincount(seed, minlength=len(c)))
            # Store the relation of lo -> hi: the reverse of the found one when the pair was flipped.
            t = np.where(flip, self.reverse_type[t], t)
            e_u.append(u.astype(np.int16))
            e_v.append(v.astype(np.int16))
            e_t.append(t.astype(np.int16))
            edge_counts.append(np.bincount(es, minlength=len(c)))
        self.nodes = np.concatenate(nodes) if nodes else np.zeros(0, np.int32)
        self.node_ptr = np.r_[0, np.cumsum(np.concatenate(node_counts) if node_counts else [])].astype(np.int64)
        self.edge_u = np.concatenate(e_u) if e_u else np.zeros(0, np.int16)
        self.edge_v = np.concatenate(e_v) if e_v else np.zeros(0, np.int16)
        self.edge_t = np.concatenate(e_t) if e_t else np.zeros(0, np.int16)
        self.edge_ptr = np.r_[0, np.cumsum(np.concatenate(edge_counts) if edge_counts else [])].astype(np.int64)

    # ---- queries
    def __len__(self) -> int:
        return len(self.node_ptr) - 1

    def num_nodes_of(self) -> np.ndarray:
        """Subgraph size (node count) of every code."""
        return np.diff(self.node_ptr)

    def nodes_of(self, code_id: int) -> np.ndarray:
        return self.nodes[self.node_ptr[code_id]:self.node_ptr[code_id + 1]].astype(np.int64)

    def edges_of(self, code_id: int) -> np.ndarray:
        """Local edges [3, E] (u, v, type), each unordered pair once."""
        a, b = self.edge_ptr[code_id], self.edge_ptr[code_id + 1]
        return np.stack([self.edge_u[a:b], self.edge_v[a:b], self.edge_t[a:b]]).astype(np.int64)

    def batch(self, code_ids, drop_edge_p: float = 0.0, rng: np.random.Generator | int | None = None) -> SubgraphBatch:
        """Assemble the subgraphs of ``code_ids``; ``drop_edge_p`` drops each undirected edge with that
        probability (both directions together), for augmentation during training."""
        ids = np.asarray(code_ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"code ids must be in 0..{len(self) - 1}")
        if not 0.0 <= drop_edge_p < 1.0:
            raise ValueError("drop_edge_p must be in [0, 1)")
        n_start, n_count = self.node_ptr[ids], self.node_ptr[ids + 1] - self.node_ptr[ids]
        node_ids = self.nodes[_ragged_arange(n_start, n_count)].astype(np.int64)
        offsets = np.cumsum(n_count) - n_count
        e_start, e_count = self.edge_ptr[ids], self.edge_ptr[ids + 1] - self.edge_ptr[ids]
        eidx = _ragged_arange(e_start, e_count)
        shift = np.repeat(offsets, e_count)
        u = self.edge_u[eidx].astype(np.int64) + shift
        v = self.edge_v[eidx].astype(np.int64) + shift
        t = self.edge_t[eidx].astype(np.int64)
        if drop_edge_p > 0 and len(t):
            gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
            keep = gen.random(len(t)) >= drop_edge_p
            u, v, t = u[keep], v[keep], t[keep]
        node_ids_t = torch.from_numpy(node_ids)
        return SubgraphBatch(
            node_ids=node_ids_t,
            node_type=self.node_type_table[node_ids_t],
            edge_index=torch.from_numpy(np.stack([np.concatenate([u, v]), np.concatenate([v, u])])),
            edge_type=torch.from_numpy(np.concatenate([t, self.reverse_type[t]])),
            batch=torch.from_numpy(np.repeat(np.arange(len(ids), dtype=np.int64), n_count)),
            center=torch.from_numpy(offsets.astype(np.int64)),
            num_graphs=len(ids),
        )

    # ---- persistence (npz without pickle)
    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, nodes=self.nodes, node_ptr=self.node_ptr, edge_u=self.edge_u, edge_v=self.edge_v,
                     edge_t=self.edge_t, edge_ptr=self.edge_ptr,
                     meta=np.array([FORMAT_VERSION, self.k_hops, self.max_nodes, self.fanout], dtype=np.int64))

    @classmethod
    def load(cls, path: str | Path, kg) -> SubgraphIndex:
        path = Path(path)
        if not path.is_file():
            raise DataFileError(f"subgraph index {path} does not exist; build it with `medtok-qa build`")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("nodes", "node_ptr", "edge_u", "edge_v", "edge_t", "edge_ptr")}
            version, k_hops, max_nodes, fanout = (int(x) for x in z["meta"])
        if version != FORMAT_VERSION or len(arrays["node_ptr"]) - 1 != len(kg.code_node):
            raise DataFileError(f"subgraph index {path} does not match this graph; rebuild it")
        return cls(kg, k_hops, max_nodes, fanout, _arrays=arrays)

    @classmethod
    def load_or_build(cls, kg, folder: str | Path, k_hops: int = 2, max_nodes: int = 32, fanout: int = 10,
                      use_cache: bool = True, progress: bool = False) -> SubgraphIndex:
        """The index cached as ``folder/subgraphs-<settings>.npz`` (folder: the graph's cache folder)."""
        name = hashlib.sha256(json.dumps([k_hops, max_nodes, fanout, FORMAT_VERSION]).encode()).hexdigest()[:8]
        path = Path(folder) / f"subgraphs-k{k_hops}-n{max_nodes}-f{fanout}-{name}.npz"
        if use_cache and path.is_file():
            return cls.load(path, kg)
        index = cls(kg, k_hops, max_nodes, fanout, progress=progress)
        index.save(path)
        return index


def _reverse_types(relations: list[str]) -> np.ndarray:
    """Relation id of the reverse direction of each relation (itself when symmetric)."""
    from medtok_core.graph import REVERSE_RELATIONS

    both = {**REVERSE_RELATIONS, **{v: k for k, v in REVERSE_RELATIONS.items()}}
    rid = {r: i for i, r in enumerate(relations)}
    return np.array([rid.get(both.get(r, r), i) for i, r in enumerate(relations)], dtype=np.int64)


def drop_edges(batch: SubgraphBatch, p: float, generator: torch.Generator | None = None) -> SubgraphBatch:
    """Edge dropout on an assembled batch (drops directed edges independently; prefer
    ``SubgraphIndex.batch(drop_edge_p=...)``, which drops both directions of a pair together)."""
    if p <= 0:
        return batch
    keep = torch.rand(batch.edge_type.shape[0], generator=generator) >= p
    return SubgraphBatch(batch.node_ids, batch.node_type, batch.edge_index[:, keep], batch.edge_type[keep],
                         batch.batch, batch.center, batch.num_graphs)
