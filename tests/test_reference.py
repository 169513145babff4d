"""Embeddings-only references (qa/reference.py, recipes/reference.py) and the artifact collapse rate
(eval/collapse.py): a synthetic case with a known answer, the uniform fallback, the report rows,
the pipeline stage, and a collapse rate counted by hand."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from disease_linking.questions import CodeRef, MCQItem, Mention, write_jsonl
from eval.collapse import artifact_collapse, collapses
from eval.evaluate import BootstrapConfig, EvalConfig, Run, evaluate, summarize
from eval.report import render_report
from medtok_core.tokenizer import MedTokTokenizer
from qa.prefix import CodeSource
from qa.reference import (
    GROUP_TITLE,
    CodeVectors,
    ReferenceError,
    ReferenceOptions,
    load_reference,
    read_reference_config,
    tie_break_pick,
    train_reference,
)
from qa.tiny import TINY_CODES, build_tiny_medtok, tiny_questions
from qa.training import DataOptions, load_questions, make_split
from recipes import pipeline as pl
from recipes.reference import main as reference_main

FAST = ReferenceOptions(hidden=32, epochs=60, patience=0, lr=1e-2, dropout=0.0)


def _tiered_questions(n_per_tier: int) -> list[MCQItem]:
    """tiny_questions (the right option's code is the stem's code) in every tier, unique ids."""
    items = []
    for seed, tier in enumerate(("Basic", "Intermediate", "Expert")):
        for it in tiny_questions(n_per_tier, seed=seed, tier=tier):
            items.append(dataclasses.replace(it, id=f"{tier[0]}-{it.id}"))
    return items


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    data = root / "tiny.jsonl"
    write_jsonl(data, _tiered_questions(120))
    return {"root": root, "medtok": str(build_tiny_medtok(root / "medtok", TINY_CODES)), "data": str(data)}


def _codes(assets) -> CodeSource:
    return CodeSource(MedTokTokenizer.from_pretrained(assets["medtok"]))


def _fake_text_vectors(texts: list[str]) -> torch.Tensor:
    """A deterministic stand-in for the text encoder (one fixed random vector per text)."""
    rows = []
    for t in texts:
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(t.encode()).digest()[:6], "little"))
        rows.append(torch.randn(16, generator=g))
    return torch.stack(rows)


# ---- the model -------------------------------------------------------------------------------------
@pytest.mark.parametrize("features", ["medtok", "text"])
def test_reference_learns_that_the_answer_shares_the_stems_code(assets, features):
    train = tiny_questions(160, seed=5)
    val = tiny_questions(40, seed=6)
    vectors = CodeVectors(_codes(assets), features, _fake_text_vectors)
    model, summary = train_reference("ref-" + features, vectors, train, val, FAST, seed=0)
    test = tiny_questions(80, seed=7)
    scores = model.score(test)
    covered = [(s, it) for s, it in zip(scores, test, strict=True) if s["n_codes"]]
    assert summary["n_train_covered"] < summary["n_train"]  # uncoded questions are not trained on
    assert len(covered) >= 60
    assert sum(s["pred"] == it.answer for s, it in covered) / len(covered) >= 0.95


def test_uncoded_questions_fall_back_to_uniform_with_an_id_drawn_letter(assets):
    vectors = CodeVectors(_codes(assets), "medtok")
    model, _ = train_reference("ref-medtok", vectors, tiny_questions(40), [], dataclasses.replace(FAST, epochs=2), 0)
    uncoded = [it for it in tiny_questions(200, seed=3) if not it.mentions]
    scores = model.score(uncoded)
    assert all(s["n_codes"] == 0 and set(s["probs"].values()) == {0.25} for s in scores)
    assert scores == model.score(uncoded)  # deterministic
    assert len({s["pred"] for s in scores}) > 1  # not a fixed letter: letter bias cannot score


def test_ties_are_broken_by_the_question_id_not_by_letter_order():
    picks = {tie_break_pick(f"q{i}", "ABCD", [0.4, 0.4, 0.1, 0.1]) for i in range(40)}
    assert picks == {"A", "B"}
    assert tie_break_pick("q1", "ABCD", [0.1, 0.2, 0.6, 0.1]) == "C"


def test_cli_trains_on_the_finetunes_split_and_reloads_identically(assets, tmp_path):
    out = tmp_path / "ref"
    folders = reference_main(["--medtok", assets["medtok"], "--data.train_file", assets["data"],
                              "--data.limit_train", "60", "--references", "ref-medtok", "--seeds", "0,1",
                              "--model.epochs", "3", "--output", str(out)])
    assert [f.name for f in folders] == ["ref-medtok-seed0", "ref-medtok-seed1"]
    opts = DataOptions(train_file=assets["data"], limit_train=60)
    train, val = make_split(load_questions(opts), opts)
    split = json.loads((folders[0] / "split.json").read_text())
    assert split["train"] == [it.id for it in train] and split["val"] == [it.id for it in val]
    assert read_reference_config(folders[1])["seed"] == 1
    items = tiny_questions(12, seed=9)
    assert load_reference(folders[0]).score(items) == load_reference(folders[0]).score(items)
    other = build_tiny_medtok(tmp_path / "other", TINY_CODES, seed=1)
    with pytest.raises(ReferenceError, match="sha256 mismatch"):
        load_reference(folders[0], medtok=str(other))


@pytest.mark.parametrize("argv, message", [
    (["--references", "ref-bogus"], "unknown reference 'ref-bogus'"),
    ([], "medtok is required"),
])
def test_bad_reference_options_are_one_line_errors(assets, tmp_path, capsys, argv, message):
    base = [] if "medtok is required" in message else ["--medtok", assets["medtok"]]
    with pytest.raises(SystemExit) as exc:
        reference_main(base + ["--output", str(tmp_path / "r")] + argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


# ---- evaluation and report -------------------------------------------------------------------------
def test_eval_scores_references_beside_other_methods_in_their_own_group(assets, tmp_path):
    folders = reference_main(["--medtok", assets["medtok"], "--data.train_file", assets["data"],
                              "--references", "ref-medtok", "--model.epochs", "30",
                              "--output", str(tmp_path / "ref")])
    results = evaluate(EvalConfig(data=assets["data"], references=[str(f) for f in folders],
                                  medtok=assets["medtok"], output=str(tmp_path / "eval"), plots=False,
                                  bootstrap=BootstrapConfig(n_resamples=50)))
    (run,) = results["runs"]
    assert run["method"] == "ref-medtok" and run["seed"] == 0
    held_out = json.loads((folders[0] / "split.json").read_text())["val"]
    assert results["dataset"]["Intermediate"]["n"] == len(held_out)  # its held-out slice, as a fine-tune's
    for tier in ("Basic", "Intermediate", "Expert"):
        assert run["tiers"][tier]["accuracy_codes_used"]["accuracy"] >= 0.9
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"*{GROUP_TITLE}:*" in report and "## References, no LLM" in report
    assert "## Collapse rate of the MedTok artifact" in report
    lines = [json.loads(x) for x in (tmp_path / "eval" / "predictions" / "ref-medtok.jsonl").read_text().splitlines()]
    assert {x["method"] for x in lines} == {"ref-medtok"} and all("probs" in x for x in lines)


def _item(i: int, tier: str, answer: str = "A") -> MCQItem:
    return MCQItem(f"q{i}", f"question {i}", {"A": "a", "B": "b", "C": "c", "D": "d"}, answer, tier)


def test_report_puts_reference_rows_after_the_llm_methods_under_their_heading():
    items = [_item(i, t, "ABCD"[i % 4]) for i, t in enumerate(["Basic"] * 4 + ["Intermediate"] * 4 + ["Expert"] * 4)]
    runs = []
    for method in ("ref-text", "none", "ref-medtok", "medtok"):
        preds = {it.id: {"pred": "A", "probs": {}, "n_codes": int(method.startswith("ref") and i % 2)}
                 for i, it in enumerate(items)}
        runs.append(Run(method, 0, method, preds))
    results = summarize(items, runs, boot=BootstrapConfig(n_resamples=20))
    assert [r["method"] for r in results["runs"]] == ["none", "medtok", "ref-medtok", "ref-text"]
    report = render_report(results)
    table = report.split("## Accuracy by tier")[1].split("\n## ")[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows[:5] == ["**none**", "**medtok**", f"*{GROUP_TITLE}:*", "**ref-medtok**", "**ref-text**"]
    assert results["runs"][2]["tiers"]["All"]["share_with_codes_used"] == 0.5  # coverage
    assert "ref-medtok" in report.split("## References, no LLM")[1]
    comps = {(c["method"], c["tier"]) for c in results["comparisons"]}
    assert ("ref-text", "All") in comps  # McNemar against the baseline like any method


# ---- collapse rate -----------------------------------------------------------------------------------
def _coded(i: int, tier: str, option_codes: dict[str, str]) -> MCQItem:
    item = _item(i, tier)
    mentions = [Mention(item.options[x], 0, 1, f"option:{x}", [CodeRef("ICD10CM", code)])
                for x, code in option_codes.items()]
    return dataclasses.replace(item, mentions=mentions)


def test_collapse_rate_counted_by_hand(tmp_path):
    codes = [("ICD10CM", "E11", "Type 2 diabetes mellitus"), ("ICD10CM", "E11.9", "without complications"),
             ("ICD10CM", "I50.9", "Heart failure")]
    artifact = build_tiny_medtok(tmp_path / "medtok", codes)
    basic = [_coded(1, "Basic", {"A": "E11.65", "B": "E11.8", "C": "I50.9"}),  # E11.65, E11.8 -> E11: collapsed
             _coded(2, "Basic", {"A": "E11.9", "B": "I50.9"})]  # two different codes: not collapsed
    expert = [_coded(3, "Expert", {"A": "E11.9"}),  # one coded option: not counted
              _coded(4, "Expert", {"A": "E11.9", "B": "E11.9", "C": "I50.9"}),  # the same code twice: collapsed
              _coded(5, "Expert", {"A": "Z99.9", "B": "I50.9"}),  # Z99.9 has no known ancestor: one coded
              _item(6, "Expert")]  # nothing linked
    col = artifact_collapse({"Basic": basic, "Expert": expert, "All": basic + expert}, str(artifact))
    # q1 collapses through the artifact's mapping, q4 already in the linking (the same linked code).
    assert col["tiers"]["Basic"] == {"n": 2, "n_two_coded": 2, "n_collapsed": 1, "rate": 0.5, "n_collapsed_linked": 0}
    assert col["tiers"]["Expert"] == {"n": 4, "n_two_coded": 1, "n_collapsed": 1, "rate": 1.0, "n_collapsed_linked": 1}
    assert col["tiers"]["All"] == {"n": 6, "n_two_coded": 3, "n_collapsed": 2, "rate": 2 / 3, "n_collapsed_linked": 1}
    assert collapses({"A": [], "B": ["x"]}) is None and collapses({"A": ["x"], "B": ["y", "x"]}) is True


# ---- pipeline ------------------------------------------------------------------------------------------
def test_pipeline_trains_references_on_the_finetunes_split_and_evaluates_them(tmp_path, monkeypatch):
    monkeypatch.setattr(pl, "_config_args", lambda opts: [])
    cfg = pl.PipelineConfig(output=str(tmp_path / "p"), dataset=str(tmp_path / "q.json"), methods=["none"],
                            seeds=[0, 1], finetune=pl.StageOptions("configs/qa_quick.yaml", {
                                "data.limit_train": 32, "model": {"codes_per_mention": 2}}))
    stages = {s.name: s for s in pl.plan(cfg)}
    ref, ev = stages["reference"], stages["eval"]
    args = " ".join(ref.argv)
    assert "--data.limit_train 32" in args and "--data.split_seed 0" in args and "--model.codes_per_mention 2" in args
    assert "--seeds 0,1" in args and "--references ref-medtok,ref-text" in args
    assert set(ref.depends) == {"link", "medtok"} and "reference" in ev.depends
    assert len(ev.argv[ev.argv.index("--references") + 1].split(",")) == 4
    assert ev.argv[ev.argv.index("--codes_per_mention") + 1] == "2"
    none = pl.plan(dataclasses.replace(cfg, references=[]))
    assert "reference" not in [s.name for s in none] and "--references" not in none[-1].argv
