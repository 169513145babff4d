"""Knowledge-grounded QA generator (qa/kgqa.py, medtok-qa kgqa): no true answer among the
distractors, no test stem or test fact in training, deterministic, and the held-out edges really
leave the graph MedTok trains on."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from disease_linking.questions import load_mcq
from medtok_core.graph import KnowledgeGraph, _symmetrize, remove_heldout
from medtok_core.heldout import read_heldout, relation_pairs
from medtok_core.vocab import CodeVocab
from qa.kgqa import (
    HELDOUT,
    QUESTIONS,
    SUMMARY,
    KGQAConfig,
    generate,
    indication_entities,
    split_of,
    write_dataset,
)

REPO = Path(__file__).resolve().parent.parent
N_DISEASES, N_DRUGS = 60, 40


def synthetic_graph(seed: int = 0, one_to_one: bool = False) -> tuple[KnowledgeGraph, CodeVocab]:
    """Two ICD-10-CM chapters of categories (each with a finer child code), ATC substances in two
    anatomical groups (two codes share one name, as prednisolone's do), disease and drug nodes,
    and random indication edges, some through a child code only."""
    rng = random.Random(seed)
    rows = [("ICD10CM", "1", "Chapter one", ""), ("ICD10CM", "2", "Chapter two", "")]
    for i in range(N_DISEASES):
        cat = f"{'AB'[i % 2]}{i:02d}"
        rows += [("ICD10CM", cat, f"Disease number {i}", "1" if i % 2 == 0 else "2"),
                 ("ICD10CM", f"{cat}.9", f"Disease number {i}, unspecified", cat)]
    for j in range(N_DRUGS):
        rows.append(("ATC", f"{'CN'[j % 2]}01AA{j:02d}", f"drug{j}", ""))
    rows.append(("ATC", "S01AA99", "drug3", ""))  # a second code of drug3's name
    table = pd.DataFrame(rows, columns=["system", "code", "description", "parent"]).sort_values(
        ["system", "code"], ignore_index=True)
    table.insert(0, "code_id", np.arange(len(table), dtype=np.int32))
    table["synonyms"] = [[] for _ in range(len(table))]
    vocab = CodeVocab(table)
    keys = [f"MONDO:{i}" for i in range(N_DISEASES)] + [f"DB{j:05d}" for j in range(N_DRUGS)]
    n_base = len(keys)
    code_node = np.arange(n_base, n_base + len(table))
    edges = []
    for i in range(N_DISEASES):
        cat = f"{'AB'[i % 2]}{i:02d}"
        # half the categories attach directly, the others through their child code only
        code = cat if i % 2 else f"{cat}.9"
        edges.append((code_node[vocab.id_of("ICD10CM", code)], i, "code_disease"))
        drugs = ([i] if i < N_DRUGS else []) if one_to_one else rng.sample(range(N_DRUGS), rng.randint(1, 4))
        for j in drugs:
            edges.append((i, N_DISEASES + j, "indication"))
    for j in range(N_DRUGS):
        edges.append((code_node[vocab.id_of("ATC", f"{'CN'[j % 2]}01AA{j:02d}")], N_DISEASES + j, "code_drug"))
    edges.append((code_node[vocab.id_of("ATC", "S01AA99")], N_DISEASES + 3, "code_drug"))
    df = pd.DataFrame(edges, columns=["src", "dst", "relation"])
    node_key = np.array(keys + [f"{s}:{c}" for s, c in zip(table.system, table.code, strict=True)], dtype=object)
    edge_index, edge_type, relations = _symmetrize(df, len(node_key))
    node_type = np.array([1] * N_DISEASES + [2] * N_DRUGS + [0] * len(table), dtype=np.int8)
    kg = KnowledgeGraph(node_key=node_key, node_type=node_type, node_name=node_key.copy(),
                        edge_index=edge_index, edge_type=edge_type, relations=relations, code_node=code_node)
    return kg, vocab


@pytest.fixture(scope="module")
def graph():
    return synthetic_graph()


@pytest.fixture(scope="module")
def dataset(graph):
    kg, vocab = graph
    return generate(kg, vocab, KGQAConfig(test_per_condition=6, max_train=0))


def option_entities(item):
    """(stem code, {letter: option code}) from the mentions."""
    stem = next(m for m in item.mentions if m.field == "stem").codes[0]
    opts = {m.field[7:]: m.codes[0] for m in item.mentions if m.field.startswith("option:")}
    return f"{stem.system}:{stem.code}", {k: f"{c.system}:{c.code}" for k, c in opts.items()}


def test_items_are_valid_linked_questions_with_balanced_letters(dataset, tmp_path, graph):
    out = write_dataset(dataset, graph[0], tmp_path / "kgqa")
    items, skipped = load_mcq(out / QUESTIONS)  # the project's one validator
    assert not skipped and len(items) == len(dataset.items)
    assert {it.subject for it in items} == {"drug_for_condition", "condition_for_drug"}
    assert {it.tier for it in items} == {"Intermediate", "Basic", "Expert"}
    for it in items:
        assert len(it.options) == 4 and len(set(it.options.values())) == 4
        stem, opts = option_entities(it)
        assert set(opts) == set(it.options)
    summary = json.loads((out / SUMMARY).read_text())
    for family in ("drug_for_condition", "condition_for_drug"):
        for split in ("train", "test_ingraph", "test_heldout"):
            group = [it for it in items if it.subject == family and split_of(it) == split]
            counts = [sum(it.answer == k for it in group) for k in "ABCD"]
            assert max(counts) - min(counts) <= 1, (family, split, counts)  # balanced letters
    assert 0 <= summary["families"]["all"]["test_heldout"]["popularity"] <= 1


def test_no_true_answer_among_distractors(dataset, graph):
    kg, vocab = graph
    ent = indication_entities(kg, vocab)
    # every fact on the full graph, by the names the options show
    facts = {(ent.name[d], ent.name[g]) for d, g in zip(ent.pairs.disease, ent.pairs.drug, strict=True)}
    for it in dataset.items:
        stem_name = next(m for m in it.mentions if m.field == "stem").text
        for letter, text in it.options.items():
            fact = (stem_name, text) if it.subject == "drug_for_condition" else (text, stem_name)
            assert (fact in facts) == (letter == it.answer), (it.id, letter, text)


def test_no_test_stem_and_no_test_fact_in_training(dataset):
    def fact(it):
        stem = next(m for m in it.mentions if m.field == "stem").text
        ans = it.options[it.answer]
        return (stem, ans) if it.subject == "drug_for_condition" else (ans, stem)

    train = [it for it in dataset.items if split_of(it) == "train"]
    test = [it for it in dataset.items if split_of(it) != "train"]
    assert train and test
    train_stems = {(it.subject, option_entities(it)[0]) for it in train}
    assert not train_stems & {(it.subject, option_entities(it)[0]) for it in test}
    assert not {fact(it) for it in train} & {fact(it) for it in test}
    for splits in dataset.splits.values():
        assert not set(splits["train"]) & (set(splits["test_ingraph"]) | set(splits["test_heldout"]))
        assert not set(splits["test_ingraph"]) & set(splits["test_heldout"])


def test_deterministic_from_the_seed(graph, tmp_path):
    kg, vocab = graph
    cfg = KGQAConfig(test_per_condition=6, max_train=0)
    a = write_dataset(generate(kg, vocab, cfg), kg, tmp_path / "a")
    b = write_dataset(generate(kg, vocab, cfg), kg, tmp_path / "b")
    for name in (QUESTIONS, HELDOUT, SUMMARY):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    c = write_dataset(generate(kg, vocab, KGQAConfig(test_per_condition=6, max_train=0, seed=1)), kg, tmp_path / "c")
    assert (a / QUESTIONS).read_bytes() != (c / QUESTIONS).read_bytes()


def supported_facts(kg, vocab) -> set[tuple[str, str]]:
    ent = indication_entities(kg, vocab)
    return {(ent.name[d], ent.name[g]) for d, g in zip(ent.pairs.disease, ent.pairs.drug, strict=True)}


def test_heldout_file_removes_every_heldout_fact_and_keeps_in_graph_ones(dataset, graph, tmp_path):
    kg, vocab = graph
    out = write_dataset(dataset, kg, tmp_path / "kgqa")
    # The file MedTok's data.heldout_edges reads, applied as build_knowledge_graph applies it.
    trained_on, n_removed = remove_heldout(kg, read_heldout(out / HELDOUT))
    assert n_removed > 0
    before, after = supported_facts(kg, vocab), supported_facts(trained_on, vocab)
    for it in dataset.items:
        stem = next(m for m in it.mentions if m.field == "stem").text
        ans = it.options[it.answer]
        fact = (stem, ans) if it.subject == "drug_for_condition" else (ans, stem)
        assert fact in before
        if split_of(it) == "test_heldout":
            assert fact not in after, it.id
        elif split_of(it) == "test_ingraph":
            assert fact in after, it.id
    # and no code pair of a held-out fact keeps an indication edge (child codes included)
    assert len(relation_pairs(trained_on, "indication", np.arange(len(vocab)), np.arange(len(vocab)))) < \
        len(relation_pairs(kg, "indication", np.arange(len(vocab)), np.arange(len(vocab))))


@pytest.mark.parametrize("seed", range(4))
def test_a_fact_held_out_in_one_family_is_held_out_for_both(seed, tmp_path):
    """One drug per disease: the same fact is often a test fact of both families, once in-graph
    and once held out; it must leave the graph, and its in-graph question must go."""
    kg, vocab = synthetic_graph(seed, one_to_one=True)
    ds = generate(kg, vocab, KGQAConfig(test_per_condition=8, max_train=0, seed=seed))
    out = write_dataset(ds, kg, tmp_path / "kgqa")
    after = supported_facts(remove_heldout(kg, read_heldout(out / HELDOUT))[0], vocab)
    for it in ds.items:
        stem = next(m for m in it.mentions if m.field == "stem").text
        ans = it.options[it.answer]
        fact = (stem, ans) if it.subject == "drug_for_condition" else (ans, stem)
        assert (fact in after) == (split_of(it) != "test_heldout"), it.id


def test_too_few_stems_is_a_clear_error(graph):
    from commons.errors import UserError

    with pytest.raises(UserError, match="lower test_per_condition"):
        generate(*graph, KGQAConfig(test_per_condition=50))


def test_cli_help_and_bad_option():
    env_cmd = [sys.executable, "-m", "recipes.cli", "kgqa"]
    shown = subprocess.run(env_cmd + ["--help"], capture_output=True, text=True, cwd=REPO)
    assert shown.returncode == 0 and "--test_per_condition" in shown.stdout and "--families" in shown.stdout
    bad = subprocess.run(env_cmd + ["--families", "nonsense"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr


@pytest.mark.integration
def test_real_graph_heldout_edges_leave_the_graph_medtok_builds(tmp_path):
    """On the real data: the MedTok graph built with the generated file (read back from its cache)
    has no indication support left for any held-out test fact, and keeps every in-graph one."""
    from medtok_core.graph import KGConfig, build_knowledge_graph
    from qa.kgqa import load_graph

    cfg = KGQAConfig(output=str(tmp_path / "kgqa"), test_per_condition=30, max_train=50)
    kg, vocab = load_graph(cfg)
    ds = generate(kg, vocab, cfg)
    out = write_dataset(ds, kg, cfg.output)
    trained_on = build_knowledge_graph(vocab, KGConfig(heldout_edges=str(out / HELDOUT)))
    after = supported_facts(trained_on, vocab)
    for it in ds.items:
        stem = next(m for m in it.mentions if m.field == "stem").text
        ans = it.options[it.answer]
        fact = (stem, ans) if it.subject == "drug_for_condition" else (ans, stem)
        if split_of(it) == "test_heldout":
            assert fact not in after
        elif split_of(it) == "test_ingraph":
            assert fact in after


def test_minimum_detectable_difference():
    from eval.stats import minimum_detectable_difference as mdd

    # Textbook value: 25 % vs 37.3 % needs ~200 per group at 80 % power, alpha 0.05 (two-sided).
    assert 0.115 < mdd(200) < 0.13
    assert mdd(800) < mdd(200) < mdd(50)  # more questions, smaller detectable gains
    assert mdd(0) is None and mdd(2) is None  # nothing is detectable on two questions
    assert mdd(200, power=0.9) > mdd(200)
