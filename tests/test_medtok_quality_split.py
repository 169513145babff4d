"""MedTok quality protocol: validation and test parts of the held-out pairs, the scored --split,
training seeds (per-seed artifacts, resume, an interval over pairs and seeds), and results written
before the protocol still publish."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medtok_core import quality as Q
from medtok_core.graph import remove_heldout
from medtok_core.heldout import read_heldout, relation_pairs, split_pairs, write_heldout
from recipes import medtok_quality as MQ
from tests.test_kgqa import synthetic_graph
from tests.test_medtok import tiny_config, tiny_data

REPO = Path(__file__).resolve().parent.parent
key = lambda ab: set(map(tuple, np.asarray(ab).tolist()))  # noqa: E731


def many_support_pairs(seed: int = 0) -> pd.DataFrame:
    """120 code pairs over shared KG edges (several pairs per edge, some pairs on two edges)."""
    rng = np.random.default_rng(seed)
    rows = [(a, 100 + b, 1000 + a // 2, 2000 + b) for a in range(30) for b in rng.choice(20, 4, replace=False)]
    rows += [(a, 100 + b, 1500 + a, 2000 + b) for a, _, _, _ in rows[::7] for b in [0]]
    return pd.DataFrame(rows, columns=["a", "b", "x", "y"]).drop_duplicates(["a", "b", "x", "y"])


def test_validation_and_test_parts_are_disjoint_seeded_and_both_leave_the_graph():
    pairs = many_support_pairs()
    split = split_pairs(pairs, "indication", fraction=0.2, max_test=1000, seed=4, validation=True)
    again = split_pairs(pairs, "indication", fraction=0.2, max_test=1000, seed=4, validation=True)
    assert np.array_equal(split.validation, again.validation) and np.array_equal(split.test, again.test)
    val, test = key(split.validation), key(split.test)
    assert len(val) == len(test) == round(0.2 * len(split.all_pairs)) and not val & test
    # the validation part is the single part of the protocol before it (same seed): earlier choices were made on it
    assert val == key(split_pairs(pairs, "indication", 0.2, 1000, 4).test)
    # every supporting edge of either part is removed; training pairs keep an edge and are in neither part
    removed = {tuple(sorted(e)) for e in split.removed[["src", "dst"]].to_numpy().tolist()}
    support = {(a, b): set() for a, b in split.all_pairs.tolist()}
    for a, b, x, y in pairs.to_numpy().tolist():
        support[a, b].add(tuple(sorted((x, y))))
    assert removed == set().union(*(support[p] for p in val | test))
    train = key(split.train)
    assert not train & (val | test) and all(support[p] - removed for p in train)
    assert len(train) + len(val) + len(test) + split.collateral == len(split.all_pairs)
    assert key(split.part("test").test) == test and key(split.part("validation").test) == val
    with pytest.raises(ValueError, match="held-out part"):
        split.part("train")
    with pytest.raises(ValueError, match="exceed"):
        split_pairs(pairs, "indication", fraction=0.6, max_test=1000, seed=4, validation=True)


@pytest.mark.parametrize("part", ["validation", "test"])
def test_the_recipe_holds_out_both_parts_and_scores_the_one_asked_for(tmp_path, part):
    """make_splits on a graph: whichever part is scored, the held-out file is the same and the graph
    it leaves (read back through remove_heldout, as build_knowledge_graph applies it) joins no pair
    of either part; the scored part is the one --split names."""
    kg, vocab = synthetic_graph()
    cfg = MQ.QualityConfig(relations=["indication:ATC:ICD10CM"], heldout_fraction=0.2, min_test_pairs=5, split=part)
    (r,), skipped = MQ.make_splits(cfg, kg, vocab.table)
    assert not skipped and r.part == part
    assert key(r.scored.test) == key(r.split.test if part == "test" else r.split.validation)
    path = write_heldout(tmp_path / "heldout_edges.csv", kg, r.split.removed)
    other = MQ.make_splits(dataclasses.replace(cfg, split="validation" if part == "test" else "test"), kg, vocab.table)
    assert path.read_bytes() == write_heldout(tmp_path / "other.csv", kg, other[0][0].split.removed).read_bytes()
    trained_on, n_removed = remove_heldout(kg, read_heldout(path))
    assert n_removed > 0
    ids = lambda s: vocab.table.code_id[vocab.table.system == s].to_numpy()  # noqa: E731
    left = key(relation_pairs(trained_on, "indication", ids("ATC"), ids("ICD10CM"))[["a", "b"]].drop_duplicates())
    assert not left & (key(r.split.validation) | key(r.split.test))
    assert key(r.split.train) <= left
    listed = MQ.heldout_pairs_table([r], vocab.table)
    assert listed.groupby("part").size().to_dict() == {"test": len(r.split.test), "validation": len(r.split.validation)}


def test_one_seed_interval_is_the_paired_bootstrap_and_two_seeds_span_them():
    rr = np.random.default_rng(0).uniform(0, 1, 300)
    a, b = Q.Observed("mrr", rr=rr + 0.02), Q.Observed("mrr", rr=rr)
    assert Q.seeded_paired_difference([a], [b], n_resamples=200, seed=3) == \
        Q.paired_difference(a, b, n_resamples=200, seed=3)
    # MedTok at +0.1 with one seed and +0.0 with the other: the pairs give no noise (paired), the
    # seeds all of it; the mean is +0.05 and the interval reaches both seeds' values.
    d = Q.seeded_paired_difference([Q.Observed("mrr", rr=rr + 0.1), b], [b], n_resamples=400, seed=0)
    assert d["difference"] == pytest.approx(0.05)
    assert d["low"] == pytest.approx(0.0, abs=1e-12) and d["high"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same metric"):
        Q.seeded_paired_difference([a], [Q.Observed("mrr", rr=rr[:10])])


def test_results_with_two_seeds_report_each_seed_and_the_combined_interval():
    rr = np.random.default_rng(1).uniform(0, 1, 200)
    t = MQ.Task("heldout_indication_mrr_cosine", "mrr", "p")
    t.add("medtok", [Q.Observed("mrr", rr=rr + 0.1), Q.Observed("mrr", rr=rr + 0.05)])
    t.add("raw_text", [Q.Observed("mrr", rr=rr)])
    t.ci = MQ.target_intervals(t, 200, 0)
    res = MQ.validate_results(MQ.results_json([t], {"split": "test", "train_seeds": [0, 1]}))
    entry = res["tasks"][t.name]
    assert entry["per_seed"] == {"medtok": pytest.approx([rr.mean() + 0.1, rr.mean() + 0.05])}
    assert entry["scores"]["medtok"] == pytest.approx(rr.mean() + 0.075) and "raw_text" not in entry["per_seed"]
    ci = entry["ci"]["raw_text"]
    assert ci["difference"] == pytest.approx(0.075) and 0.05 - 1e-9 <= ci["low"] < ci["high"] <= 0.1 + 1e-9
    assert f"{rr.mean() + 0.075:.3f}** ±0.035" in MQ.markdown_table(res)
    assert "the 2 training seeds together" in MQ.interval_description(res)
    res["tasks"][t.name]["per_seed"]["medtok"] = []
    with pytest.raises(MQ.UserError, match="per_seed"):
        MQ.validate_results(res)


def test_each_seed_trains_once_and_a_killed_training_resumes(tmp_path, monkeypatch):
    import medtok_core.train as T

    data = tiny_data()
    tcfg = tiny_config(tmp_path / "unused", max_steps=4, num_threads=1)
    got = {s: MQ.variant_embeddings(tcfg, "both", data, tmp_path / "a", "sha", False, train_seed=s) for s in (0, 1)}
    assert not torch.equal(got[0]["quantized"], got[1]["quantized"])  # the seed reaches training
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"both-seed0", "both-seed1"}

    real_train = T.train

    def killed(cfg, data):  # trains 2 of the 4 steps (checkpoint written), then the process dies
        real_train(dataclasses.replace(cfg, max_steps=2), data)
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        MQ.variant_embeddings(tcfg, "both", data, tmp_path / "b", "sha", False, train_seed=1)
    calls = []
    monkeypatch.setattr(T, "train", lambda cfg, data: calls.append(cfg.resume) or real_train(cfg, data))
    resumed = MQ.variant_embeddings(tcfg, "both", data, tmp_path / "b", "sha", False, train_seed=1)
    assert calls == [True] and torch.equal(resumed["quantized"], got[1]["quantized"])
    # finished: reused by its stamp, nothing trains; another held-out file is another run
    again = MQ.variant_embeddings(tcfg, "both", data, tmp_path / "b", "sha", False, train_seed=1)
    assert calls == [True] and torch.equal(again["quantized"], got[1]["quantized"])
    MQ.variant_embeddings(tcfg, "both", data, tmp_path / "b", "other-sha", False, train_seed=1)
    assert calls == [True, False]


def test_all_embeddings_gives_one_table_per_seed_for_trained_methods(tmp_path, monkeypatch):
    tables = {s: torch.full((3, 8), float(s)) for s in (0, 1, 2)}
    seen = []

    def fake_variant(tcfg, variant, data, out, sha, retrain, train_seed):
        seen.append((variant, train_seed))
        return {"quantized": tables[train_seed], "continuous": tables[train_seed], "tokenizer": None, "train": {}}

    monkeypatch.setattr(MQ, "variant_embeddings", fake_variant)
    monkeypatch.setattr(MQ, "description_vectors", lambda data: torch.ones(3, 5))
    cfg = MQ.QualityConfig(methods=["medtok", "text_only", "raw_text", "random"], train_seeds=[0, 2], progress=False)
    tcfg = MQ.training_config(cfg)
    tcfg.model.dim = 2
    emb, info, _ = MQ.all_embeddings(cfg, tcfg, [0, 0, 0], tmp_path, "sha")
    assert seen == [("both", 0), ("both", 2), ("text", 0), ("text", 2)]
    assert [float(e[0, 0]) for e in emb["medtok"]] == [0.0, 2.0] and len(emb["raw_text"]) == len(emb["random"]) == 1
    assert set(info) == {"both-seed0", "both-seed2", "text-seed0", "text-seed2"}


def test_options_are_checked(capsys):
    for argv, match in ([["--split", "train"], "split must be one of validation, test"],
                        [["--train_seeds", "0,0"], "train_seeds must be distinct"],
                        [["--heldout_fraction", "0.5"], "each of the two held-out parts"]):
        with pytest.raises(SystemExit) as exc:
            MQ.main(argv + ["--output", "/nonexistent/never-written"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and match in err, err


def test_results_written_before_the_protocol_still_publish(tmp_path):
    from recipes.readme import medtok_quality_summary

    # the whole-vocabulary run is still the one published before the protocol (the quick one is its release)
    old = json.loads((REPO / "docs/results/medtok_quality_full/results.json").read_text())
    assert "split" not in old and "train_seeds" not in old
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(old))
    page = tmp_path / "page.md"
    page.write_text("<!-- medtok_quality:quick -->\nold\n<!-- /medtok_quality:quick -->\n")
    MQ.main(["--publish_only", "--page", str(page), "--output", str(out)])
    text = page.read_text()
    assert "single held-out part of the runs before the validation / test protocol" in text
    assert "one training seed" in text and "| heldout_drug_drug_mrr_probe |" in text
    assert "tasks" in medtok_quality_summary(tmp_path)  # the README summary reads the published copy


@pytest.mark.integration
def test_release_run_at_tiny_size_scores_the_test_part_over_two_seeds(tmp_path):
    """The real data, tiny MedTok: --split test with two training seeds, then a validation run in the
    same folder reuses every trained model; the graph MedTok trained on (read back from its cache)
    joins no held-out pair of either part."""
    from medtok_core.graph import KGConfig, build_knowledge_graph
    from medtok_core.vocab import VocabConfig, load_or_build_vocab

    overrides = ("data.max_codes=400,data.max_nodes=8,model.dim=16,model.codebook_size=96,init_samples=96,"
                 "optim.batch_size=64,optim.link_batch=16,restart_every=1000,optim.epochs=1")
    out = tmp_path / "q"
    base = [sys.executable, "-m", "recipes.medtok_quality", "--output", str(out), "--train_seeds", "0,1",
            "--relations", "indication:ATC:ICD10CM,drug_drug:ATC:ATC", "--min_test_pairs", "5",
            "--heldout_fraction", "0.2", "--n_resamples", "100", "--progress", "false",
            "--medtok_overrides", overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(base + ["--split", "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["split"] == "test" and res["train_seeds"] == [0, 1] and res["provenance"]["seeds"] == [0, 1]
    assert (out / "report.md").read_text().startswith("# MedTok quality: held-out benchmark, test split")
    task = res["tasks"]["heldout_indication_mrr_cosine"]
    assert task["n"]["scored_pairs"] == task["n"]["test_pairs"] > 0
    assert all(len(v) == 2 for v in task["per_seed"].values()) and set(task["ci"]) >= {"raw_text"}
    assert {p.name for p in (out / "artifacts").iterdir()} == {f"{v}-seed{s}" for v in ("both", "text", "graph")
                                                              for s in (0, 1)}
    listed = pd.read_csv(out / "heldout_pairs.csv", dtype=str)
    assert set(listed.part) == {"validation", "test"}
    # the graph the MedTok models trained on, as their run built and cached it
    vocab = load_or_build_vocab(VocabConfig())
    trained_on = build_knowledge_graph(vocab, KGConfig(heldout_edges=str((out / "heldout_edges.csv").resolve())))
    att_ids = lambda s: vocab.table.code_id[vocab.table.system == s].to_numpy()  # noqa: E731
    for rel, a, b in (("indication", "ATC", "ICD10CM"), ("drug_drug", "ATC", "ATC")):
        left = relation_pairs(trained_on, rel, att_ids(a), att_ids(b))
        code = vocab.table.set_index("code_id").code
        left_codes = {(code[x], code[y]) for x, y in left[["a", "b"]].to_numpy().tolist()}
        mine = listed[listed.task == f"heldout_{rel}"]
        held = set(zip(mine.code_a, mine.code_b, strict=True))
        assert held and not held & left_codes and not held & {(y, x) for x, y in left_codes}
    models = {p: p.stat().st_mtime_ns for p in (out / "artifacts").rglob("model.safetensors")}
    assert len(models) == 6
    again = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    val = json.loads((out / "results.json").read_text())
    assert val["split"] == "validation" and val["tasks"]["heldout_indication_mrr_cosine"]["n"]["scored_pairs"] > 0
    # the same held-out file, so every variant and seed is reused by its stamp: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in models} == models
