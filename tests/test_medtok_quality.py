"""Metrics of the MedTok quality suite on tiny synthetic cases with known answers, results.json
schema, and the entry point's user errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from commons.errors import UserError
from medtok_core import quality as Q
from medtok_core.heldout import PairSplit
from recipes import medtok_quality as MQ


def onehot(n: int, dim: int | None = None) -> torch.Tensor:
    return torch.eye(n, dim or n)


def test_ranks_count_ties_half_and_skip_filtered():
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1],     # true = col 1, tied with col 2 -> rank 2.5
                           [0.2, 0.8, 0.3, 0.9]])    # true = col 1, col 3 skipped -> rank 1
    truth = torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    skip = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert Q.ranks_of_best_true(scores, truth, skip).tolist() == [2.5, 1.0]
    assert Q.Observed.from_ranks(torch.tensor([1.0, 2.0, 4.0])).value == pytest.approx((1 + 0.5 + 0.25) / 3)


def test_roc_auc_known_values():
    assert Q.roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert Q.roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert Q.roc_auc(np.array([0.5]), np.array([0.5])) == 0.5


def tree_vocab() -> pd.DataFrame:
    """Two parents P1, P2 with three children each, one system."""
    rows = [("P1", ""), ("P2", ""), ("A1", "P1"), ("A2", "P1"), ("A3", "P1"), ("B1", "P2"), ("B2", "P2"),
            ("B3", "P2")]
    df = pd.DataFrame(rows, columns=["code", "parent"])
    df.insert(0, "system", "ICD10CM")
    df.insert(0, "code_id", np.arange(len(df)))
    df["description"] = df["code"]
    return df


def sibling_embeddings(vocab: pd.DataFrame) -> torch.Tensor:
    """One-hot of the parent (children of a parent identical), parents on their own axes: the
    cosine is 1 exactly for two children of the same parent and 0 for every other pair."""
    groups = {p: i for i, p in enumerate(sorted(set(vocab["parent"]) - {""}))}
    idx = [groups[p] if p else len(groups) + i for i, p in enumerate(vocab["parent"])]
    return onehot(len(vocab) + len(groups))[idx]


def test_hierarchy_auc_known_answer():
    vocab = tree_vocab()
    pos, neg = Q.hierarchy_pairs(vocab, 200, 0)
    parent = vocab["parent"].to_numpy()
    assert (parent[pos[:, 0]] == parent[pos[:, 1]]).all() and (parent[pos[:, 0]] != "").all()
    neg_siblings = np.mean((parent[neg[:, 0]] == parent[neg[:, 1]]) & (parent[neg[:, 0]] != ""))
    # positives score 1; a negative scores 1 (a tie, half) when it happens to be a sibling pair, else 0
    expected = 1 - 0.5 * neg_siblings
    assert Q.hierarchy_auc(vocab, sibling_embeddings(vocab), 200, 0)["auc"] == pytest.approx(expected)
    # identical vectors for every code: all scores tie, AUC exactly one half
    assert Q.hierarchy_auc(vocab, torch.ones(len(vocab), 4), 200, 0)["auc"] == 0.5


def test_parent_mrr_known_answer():
    vocab = tree_vocab()
    # each child's nearest code of the system (other than itself) is its parent: MRR 1
    e = torch.zeros(len(vocab), 8)
    e[0, 0] = e[1, 1] = 1.0
    for i, code in enumerate(vocab["code"]):
        if not code.startswith("P"):
            e[i, 0 if code.startswith("A") else 1] = 1.0
            e[i, 2 + i % 6] = 0.5 + 0.1 * i  # a private direction keeps siblings below the parent
    out = Q.parent_mrr(vocab, e, 100, 0)
    assert out["n_queries"] == 6 and out["mrr"] == pytest.approx(1.0)
    # parents swapped: each child's parent is the farthest code; 7 candidates -> rank 7
    swapped = e.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert Q.parent_mrr(vocab, swapped, 100, 0)["mrr"] < 0.3


def test_equivalence_mrr_known_answer():
    vocab = pd.DataFrame({"code_id": range(4), "system": ["ICD9CM", "ICD9CM", "ICD10CM", "ICD10CM"],
                          "code": ["1", "2", "A", "B"], "parent": "", "description": ""})
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert Q.equivalence_mrr(vocab, e, np.array([[0, 2], [1, 3]]))["mrr"] == 1.0
    assert Q.equivalence_mrr(vocab, e, np.array([[0, 3], [1, 2]]))["mrr"] == 0.5


def test_ranking_in_query_blocks_gives_the_ranks_of_one_block(monkeypatch):
    """The whole vocabulary is ranked block by block (memory); block size must not move a rank."""
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(60, 6, generator=g).round(decimals=1)  # rounded: ties happen, and count half
    rng = np.random.default_rng(0)
    pairs = np.stack([rng.integers(0, 30, 80), rng.integers(30, 60, 80)], 1)
    known = np.stack([rng.integers(0, 30, 40), rng.integers(30, 60, 40)], 1)
    candidates = np.arange(25, 60)  # overlaps the queries: a query never ranks itself
    whole = Q.rank_pairs(emb, emb, pairs, candidates, known)
    vocab = tree_vocab()
    e = torch.randn(len(vocab), 4, generator=g)
    parent_whole = Q.parent_mrr(vocab, e, 100, 0)
    monkeypatch.setattr(Q, "QUERY_BLOCK", 3)
    assert torch.equal(Q.rank_pairs(emb, emb, pairs, candidates, known), whole)
    assert Q.parent_mrr(vocab, e, 100, 0) == parent_whole


def relation_case():
    """20 'drugs' (rows 0-19) and 20 'diseases' (rows 20-39) in 5 groups; a drug treats every
    disease of its group. Embeddings are the group direction plus small noise, so cosine is ~1
    for every true pair and ~0 for every other pair. A random quarter of the pairs is held out."""
    n, groups = 20, 5
    g = torch.Generator().manual_seed(0)
    group = np.arange(n) % groups
    e = torch.cat([onehot(groups, 16)[group], onehot(groups, 16)[group]]) + 0.01 * torch.randn(2 * n, 16, generator=g)
    pairs = np.array([(i, n + j) for i in range(n) for j in range(n) if group[i] == group[j]])
    order = np.random.default_rng(0).permutation(len(pairs))
    test, train = pairs[np.sort(order[:20])], pairs[np.sort(order[20:])]
    split = PairSplit("indication", train=train, test=test, all_pairs=pairs,
                      removed=pd.DataFrame({"src": [], "dst": [], "relation": []}), collateral=0)
    return e, split


def test_relation_metrics_known_answer():
    e, split = relation_case()
    s = Q.relation_sample(split, "heldout_indication", symmetric=False, max_train=100, neg_per_pos=3, seed=0)
    assert len(s.test_pos) == 20 and len(s.test_neg) == 60
    assert not set(map(tuple, s.test_neg)) & set(map(tuple, split.all_pairs))
    assert not set(map(tuple, s.test_neg)) & set(map(tuple, s.train_neg))
    m = Q.relation_metrics(e, s)
    assert m["auc_cosine"] == 1.0 and m["mrr_cosine"] == 1.0
    assert m["auc_probe"] > 0.9
    # shuffled embeddings carry no relation: cosine falls to chance
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    shuffled = Q.relation_metrics(e[perm], s)
    assert shuffled["auc_cosine"] < 0.8 and shuffled["mrr_cosine"] < 0.6


def test_probe_matrix_matches_pair_scores():
    e, split = relation_case()
    s = Q.relation_sample(split, "r", symmetric=False, max_train=100, neg_per_pos=2, seed=0)
    probe = Q.PairProbe.fit(e, s.train_pos, s.train_neg)
    mat = probe.score_matrix(e)(np.array([0, 1]), np.array([20, 21, 22]))
    pairs = np.array([[0, 20], [0, 21], [0, 22], [1, 20], [1, 21], [1, 22]])
    assert np.allclose(mat.reshape(-1).numpy(), probe.score_pairs(e, pairs), atol=1e-5)


def test_symmetric_sample_is_filtered_both_ways():
    pairs = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    split = PairSplit("drug_drug", train=pairs[:3], test=pairs[3:], all_pairs=pairs,
                      removed=pd.DataFrame({"src": [], "dst": [], "relation": []}), collateral=0)
    s = Q.relation_sample(split, "r", symmetric=True, max_train=10, neg_per_pos=4, seed=0)
    neg = set(map(tuple, s.test_neg)) | set(map(tuple, s.train_neg))
    for a, b in pairs:
        assert (a, b) not in neg and (b, a) not in neg
    assert (1, 0) in set(map(tuple, s.train_pos))  # both orders for training


def fake_results() -> dict:
    tasks = [MQ.Task("hierarchy_sibling_auc", "roc_auc", "p", {"medtok": 0.9, "text_only": 0.8, "graph_only": 0.85,
                                                                "raw_text": 0.85, "random": 0.5}),
             MQ.Task("gem_icd9_icd10cm_mrr", "mrr", "p", {"medtok": 0.7, "text_only": 0.72, "raw_text": 0.8}),
             MQ.Task("heldout_indication_auc_probe", "roc_auc", "p", {"medtok": 0.8, "raw_text": 0.82})]
    return MQ.results_json(tasks, {"seed": 0})


def test_results_schema_and_targets(tmp_path):
    res = MQ.validate_results(fake_results())
    assert set(res["tasks"]) == {"hierarchy_sibling_auc", "gem_icd9_icd10cm_mrr", "heldout_indication_auc_probe"}
    for t in res["tasks"].values():
        assert t["higher_is_better"] is True and isinstance(t["metric"], str)
        assert set(t["scores"]) <= set(MQ.METHODS)
    tg = MQ.targets(res)
    assert tg["hierarchy_sibling_auc"] == {"ge_best_single_modality": True, "gt_raw_text": True}
    assert tg["gem_icd9_icd10cm_mrr"] == {"ge_best_single_modality": False, "ge_0.9_raw_text": False}
    assert tg["heldout_indication_auc_probe"] == {"gt_raw_text": False}
    MQ.plot(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    assert "| gem_icd9_icd10cm_mrr | mrr |" in MQ.markdown_table(res)
    res.update(targets=tg, training={"both": {"train_s": 10.0}}, medtok_config="c.yaml", medtok_overrides=[],
               n_codes=8)
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(res))
    (out / "results.png").write_bytes((tmp_path / "p.png").read_bytes())
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- medtok_quality:quick -->\nold\n<!-- /medtok_quality:quick -->\n\ntail\n")
    MQ.main(["--publish_only", "--page", str(readme), "--output", str(out)])
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| hierarchy_sibling_auc |" in text
    assert "docs/results/medtok_quality_quick/results.png" in text
    assert json.loads((tmp_path / "docs/results/medtok_quality_quick/results.json").read_text())["tasks"]
    MQ.publish(out, readme, "full")  # a second block is appended
    assert readme.read_text().count("<!-- medtok_quality:") == 2


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r["tasks"].update({"other_task": r["tasks"]["gem_icd9_icd10cm_mrr"]}), "must start with"),
    (lambda r: r["tasks"]["gem_icd9_icd10cm_mrr"].update(higher_is_better=False), "higher_is_better"),
    (lambda r: r["tasks"]["gem_icd9_icd10cm_mrr"]["scores"].update(bert=0.1), "unknown method"),
    (lambda r: r["tasks"]["gem_icd9_icd10cm_mrr"]["scores"].update(medtok="high"), "not a number"),
    (lambda r: r.update(tasks={}), "non-empty"),
])
def test_results_schema_rejects(mutate, match):
    res = fake_results()
    mutate(res)
    with pytest.raises(UserError, match=match):
        MQ.validate_results(res)


def test_cli_user_errors(capsys):
    for argv, match in ([["--methods", "medtok,bert"], "unknown method 'bert'"],
                        [["--methods", "raw_text,random"], "at least one MedTok method"],
                        [["--medtok_overrides", "model.dim"], "key=value"],
                        [["--relations", "indication:ATC"], "relation:SYSTEM_A:SYSTEM_B"],
                        [["--nope", "1"], "unknown option nope"],
                        [["--publish_only"], "--publish_only needs --page"]):
        with pytest.raises(SystemExit) as exc:
            MQ.main(argv + ["--output", "/nonexistent/never-written"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and match in err, err


def test_relation_task_names():
    specs = ["indication:ATC:ICD10CM", "indication:ATC:ICD9CM", "drug_drug:ATC:ATC"]
    assert [MQ.relation_task_name(s, specs) for s in specs] == [
        "heldout_indication_icd10cm", "heldout_indication_icd9cm", "heldout_drug_drug"]


def test_part_ablations_are_the_exported_parts_in_export_order(monkeypatch, tmp_path):
    from medtok_core.model import EMBEDDING_NAMES

    assert MQ.PART_METHODS == tuple(f"medtok_{n}" for n in EMBEDDING_NAMES)
    dim, exported = 3, torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12)  # 4 parts x dim 3
    monkeypatch.setattr(MQ, "variant_embeddings", lambda *a, **k: {"quantized": exported, "continuous": exported,
                                                                    "tokenizer": None, "train": {}})
    cfg = MQ.QualityConfig(methods=["medtok", *MQ.PART_METHODS], progress=False)
    tcfg = MQ.training_config(cfg)
    tcfg.model.dim = dim
    emb, _, _ = MQ.all_embeddings(cfg, tcfg, None, tmp_path, "sha")
    assert torch.equal(torch.cat([emb[m][0] for m in MQ.PART_METHODS], 1), emb["medtok"][0])
    assert torch.equal(emb["medtok_graph_cross"][0], exported[:, 6:9])
    assert MQ.QualityConfig().methods == list(MQ.CORE_METHODS)  # ablations only when asked for


def test_resampled_auc_is_the_auc_of_the_resample():
    rng = np.random.default_rng(0)
    pos, neg = np.round(rng.normal(0.5, 1, 40), 1), np.round(rng.normal(0, 1, 60), 1)  # rounded: ties
    ident = (np.arange(40)[None], np.arange(60)[None])
    assert Q._resampled_auc(pos, neg, *ident)[0] == pytest.approx(Q.roc_auc(pos, neg))
    draws = (rng.integers(0, 40, (5, 40)), rng.integers(0, 60, (5, 60)))
    got = Q._resampled_auc(pos, neg, *draws)
    want = [Q.roc_auc(pos[p], neg[n]) for p, n in zip(*draws, strict=True)]
    assert got == pytest.approx(want)


def test_paired_difference_is_paired_and_covers_what_it_should():
    rng = np.random.default_rng(1)
    rr = rng.uniform(0, 1, 500)
    a = Q.Observed("mrr", rr=rr)
    same = Q.paired_difference(a, Q.Observed("mrr", rr=rr.copy()))
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}
    # A constant per-query gain of 0.01 is certain when paired, though tiny next to the spread of rr.
    shifted = Q.paired_difference(Q.Observed("mrr", rr=rr + 0.01), a)
    assert shifted["difference"] == pytest.approx(0.01) and shifted["low"] == pytest.approx(0.01)
    # Two methods as good on average, each better on different queries: the interval holds 0.
    other = Q.Observed("mrr", rr=rng.permutation(rr))
    d = Q.paired_difference(a, other)
    assert d["low"] < 0 < d["high"]
    assert Q.paired_difference(a, Q.Observed("mrr", rr=rr), scale_b=0.5)["low"] > 0
    pos, neg = rng.normal(1, 1, 200), rng.normal(0, 1, 300)
    better = Q.paired_difference(Q.Observed("roc_auc", pos=pos + 1, neg=neg), Q.Observed("roc_auc", pos=pos, neg=neg))
    assert 0 < better["low"] <= better["difference"] <= better["high"]
    with pytest.raises(ValueError, match="same metric"):
        Q.paired_difference(a, Q.Observed("mrr", rr=rr[:10]))


def test_targets_table_holds_medtok_to_the_better_single_modality():
    res = fake_results()
    ci = {"text_only": {"difference": -0.02, "low": -0.05, "high": 0.01},
          "0.9 x raw_text": {"difference": -0.02, "low": -0.04, "high": -0.001}}
    res["tasks"]["gem_icd9_icd10cm_mrr"]["ci"] = ci
    res["targets"] = MQ.targets(MQ.validate_results(res))
    table = MQ.targets_table(res)
    assert "| gem_icd9_icd10cm_mrr | medtok - text_only | -0.020 [-0.050, +0.010] | within the noise | **no** |" in table
    assert "| medtok - 0.9 x raw_text | -0.020 [-0.040, -0.001] | below | **no** |" in table
    res["tasks"]["gem_icd9_icd10cm_mrr"]["ci"]["text_only"] = {"difference": 0.1}
    with pytest.raises(UserError, match="difference, low, high"):
        MQ.validate_results(res)


def test_part_norms_are_the_mean_norm_of_each_part_per_system():
    emb = torch.zeros(3, 8)  # 4 parts x dim 2
    emb[0, 0], emb[1, 6], emb[2, 2:4] = 3.0, 2.0, torch.tensor([3.0, 4.0])
    got = MQ.part_norms(emb, pd.Series(["ATC", "ATC", "ICD10CM"]))
    assert got == {"ATC": [1.5, 0.0, 0.0, 1.0], "ICD10CM": [0.0, 5.0, 0.0, 0.0]}


def test_raw_text_pca_keeps_the_leading_axes():
    """The capacity ablation projects on the directions of largest variance, in order, and with
    every axis kept it is a rotation (cosine ranks of centred vectors unchanged)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g) * torch.tensor([1.0, 3.0, 0.2]) + 5.0
    two = MQ.principal_components(x, 2)
    centred = x - x.mean(0)
    assert two.shape == (500, 2)
    assert torch.allclose(two.abs(), centred[:, [1, 0]].abs(), atol=0.1 * centred.abs().max())
    assert torch.allclose(two.var(0), centred[:, [1, 0]].var(0), rtol=0.05)
    full = MQ.principal_components(x, 3)
    assert torch.allclose(full @ full.t(), centred @ centred.t(), atol=1e-3)
