"""Held-out relation edges: code-level relation pairs, their seeded split, and the removal file.

A *code-level relation pair* ``(a, b)`` of relation ``r`` exists when code ``a`` attaches to a KG
node ``x`` (``code_drug`` / ``code_disease`` ...), code ``b`` attaches to ``y``, and the KG has an
``r`` edge ``x - y``: e.g. ``ATC:A10BA02 -> metformin -indication- type 2 diabetes <- ICD10CM:E11``.
The KG edges that make a pair are its *support*.

Honest evaluation of such pairs (``python -m recipes.medtok_quality``):

1. :func:`relation_pairs` lists every code pair with its support on the full graph;
2. :func:`split_pairs` picks two disjoint held-out parts (seeded, by pair): a *validation* part,
   on which every configuration choice is made, and a *test* part, scored once per released
   configuration; the KG edges to remove are the whole support of every pair of either part, so
   no path of length one through ``r`` still joins them and one trained model serves both parts;
3. :func:`write_heldout` saves those edges as the *held-out file* (CSV ``src,dst,relation`` of
   node keys); ``KGConfig.heldout_edges`` / ``DataConfig.heldout_edges`` take it, its hash joins
   the graph cache key, and :func:`medtok_core.graph.remove_heldout` drops both directions of each edge from the
   graph before subgraphs are cut, so no MedTok training ever sees them;
4. training pairs are the pairs still supported by a remaining edge; pairs that lost their whole
   support as a side effect of the removal are neither training nor held-out pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from commons.errors import DataFileError
from commons.io import atomic_path, sha256_file

HELDOUT_COLUMNS = ("src", "dst", "relation")
# Code -> KG node attachments used to lift KG edges to code pairs. Inherited attachments are left
# out: they copy an ancestor's node onto every descendant, so one KG edge would stand for
# hundreds of near-duplicate pairs.
ATTACH_RELATIONS = ("code_disease", "code_drug", "code_gene", "code_phenotype", "code_side_effect")
# The held-out parts: choices are made on the first, the second is scored once per released configuration.
HELDOUT_PARTS = ("validation", "test")


@dataclass
class PairSplit:
    """Code pairs of one relation (code ids, ``a`` side first) split for a held-out evaluation."""

    relation: str
    train: np.ndarray       # [n, 2] pairs still supported after the removal
    test: np.ndarray        # [m, 2] held-out test pairs (whole support removed)
    all_pairs: np.ndarray   # [p, 2] every pair on the full graph (for filtering negatives)
    removed: pd.DataFrame   # src, dst (node ids), relation: the KG edges to remove (both parts)
    collateral: int         # pairs that lost their support without being held out
    # [v, 2] held-out validation pairs, disjoint from ``test`` (whole support removed too)
    validation: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    def part(self, name: str) -> PairSplit:
        """This split as one held-out part is scored: its ``test`` is that part (``validation`` or
        ``test``); training pairs, every pair and the removed edges are unchanged."""
        if name not in HELDOUT_PARTS:
            raise ValueError(f"held-out part must be one of {', '.join(HELDOUT_PARTS)}, not {name!r}")
        return replace(self, test=self.validation if name == "validation" else self.test)


def code_attachments(kg, relations: tuple[str, ...] = ATTACH_RELATIONS) -> pd.DataFrame:
    """Direct code -> KG node links as (code_id, node)."""
    rel_ids = [i for i, r in enumerate(kg.relations) if r in relations]
    code_of_node = np.full(kg.num_nodes, -1, dtype=np.int64)
    code_of_node[np.asarray(kg.code_node, dtype=np.int64)] = np.arange(len(kg.code_node))
    src, dst = np.asarray(kg.edge_index[0], dtype=np.int64), np.asarray(kg.edge_index[1], dtype=np.int64)
    m = np.isin(kg.edge_type, rel_ids) & (code_of_node[src] >= 0)
    return pd.DataFrame({"code_id": code_of_node[src[m]], "node": dst[m]}).drop_duplicates()


def relation_pairs(kg, relation: str, codes_a: np.ndarray, codes_b: np.ndarray,
                   attachments: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every code pair (a in ``codes_a``, b in ``codes_b``) joined by a ``relation`` edge between
    their attached nodes: columns a, b (code ids), x, y (the supporting edge's node ids).

    When both sides are the same code set (drug-drug), each unordered pair appears once, a < b."""
    if relation not in kg.relations:
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in ("a", "b", "x", "y")})
    att = code_attachments(kg) if attachments is None else attachments
    rid = kg.relations.index(relation)
    m = np.asarray(kg.edge_type) == rid
    edges = pd.DataFrame({"x": np.asarray(kg.edge_index[0])[m].astype(np.int64),
                          "y": np.asarray(kg.edge_index[1])[m].astype(np.int64)})
    side_a = att[att.code_id.isin(codes_a)].rename(columns={"code_id": "a", "node": "x"})
    side_b = att[att.code_id.isin(codes_b)].rename(columns={"code_id": "b", "node": "y"})
    pairs = side_a.merge(edges, on="x").merge(side_b, on="y")[["a", "b", "x", "y"]]
    pairs = pairs[pairs.a != pairs.b]
    if set(np.asarray(codes_a).tolist()) == set(np.asarray(codes_b).tolist()):
        pairs = pairs[pairs.a < pairs.b]  # symmetric: one row per unordered pair (edges both ways)
    return pairs.drop_duplicates(ignore_index=True)


def split_pairs(pairs: pd.DataFrame, relation: str, fraction: float, max_test: int, seed: int,
                validation: bool = False) -> PairSplit:
    """Hold out ``fraction`` of the code pairs (at most ``max_test``), seeded, and the KG edges that
    support them; training pairs are those still supported by an edge that stays.

    With ``validation``, two disjoint parts of that size are held out from one seeded permutation:
    the validation part is its first pairs (exactly the single part this function holds out
    without ``validation``, so runs made before the two parts existed were scored on what is now
    validation), the test part the next ones; the support of both is removed."""
    unique = pairs[["a", "b"]].drop_duplicates().to_numpy(dtype=np.int64)
    rng = np.random.default_rng(seed)
    n_part = min(int(round(fraction * len(unique))), max_test) if len(unique) else 0
    n_parts = 2 if validation else 1
    if n_parts * n_part > len(unique):
        raise ValueError(f"{relation}: {n_parts} held-out parts of {n_part} pairs exceed its {len(unique)} pairs; "
                         "lower the held-out fraction")
    order = rng.permutation(len(unique))
    first = unique[np.sort(order[:n_part])]
    second = unique[np.sort(order[n_part:2 * n_part])] if validation else np.zeros((0, 2), dtype=np.int64)
    val, test = (first, second) if validation else (np.zeros((0, 2), dtype=np.int64), first)
    key = lambda ab: ab[:, 0] * (1 << 31) + ab[:, 1]  # noqa: E731  pair -> one int64
    is_held = np.isin(key(pairs[["a", "b"]].to_numpy()), key(np.concatenate([val, test])))
    # One row per KG edge, in the orientation the pair saw it (a's node first); the removal drops
    # both directions anyway.
    removed = pairs.loc[is_held, ["x", "y"]].to_numpy().reshape(-1, 2)
    undirected = lambda xy: key(np.sort(xy, axis=1))  # noqa: E731
    _, first_row = np.unique(undirected(removed), return_index=True)
    removed = removed[np.sort(first_row)]
    edge_gone = np.isin(undirected(pairs[["x", "y"]].to_numpy()), undirected(removed))
    kept = pairs.loc[~edge_gone, ["a", "b"]].drop_duplicates().to_numpy(dtype=np.int64)
    collateral = len(unique) - len(test) - len(val) - len(kept)
    return PairSplit(relation, kept, test, unique,
                     pd.DataFrame({"src": removed[:, 0], "dst": removed[:, 1], "relation": relation}),
                     int(collateral), val)


def write_heldout(path: str | Path, kg, removed: pd.DataFrame) -> Path:
    """Save removed edges (node ids) as the held-out file: CSV ``src,dst,relation`` of node keys."""
    path = Path(path)
    keys = np.asarray(kg.node_key, dtype=object)
    df = pd.DataFrame({"src": keys[removed.src.to_numpy(np.int64)], "dst": keys[removed.dst.to_numpy(np.int64)],
                       "relation": removed.relation.astype(str).to_numpy()})
    df = df.sort_values(list(HELDOUT_COLUMNS), ignore_index=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def read_heldout(path: str | Path) -> pd.DataFrame:
    """The held-out file as a DataFrame (src, dst, relation), with a clear error when malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"held-out edge file {path} does not exist; write one with "
                            "`python -m recipes.medtok_quality` or pass a CSV with columns src,dst,relation")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataFileError(f"held-out edge file {path} is not a readable CSV ({err})") from None
    missing = [c for c in HELDOUT_COLUMNS if c not in df.columns]
    if missing:
        raise DataFileError(f"held-out edge file {path} lacks column(s) {', '.join(missing)}; "
                            "expected src,dst,relation (node keys such as DB00331, MONDO:0005148)")
    return df[list(HELDOUT_COLUMNS)]


def heldout_fingerprint(path: str | Path | None) -> str | None:
    """sha256 of the held-out file (part of the graph cache key), or None without one."""
    if path is None:
        return None
    read_heldout(path)  # a missing or malformed file is a clear error here, before any build
    return sha256_file(path)
