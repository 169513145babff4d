"""Option-order robustness (K cyclic orders, debiased predictions) and the method difference with
an interval over questions and seeds, on fixed scorers and toy predictions (no model)."""

import json

import pytest

from commons.errors import ConfigError
from disease_linking.questions import MCQItem
from eval import evaluate as ev
from eval import permutations, stats
from eval.evaluate import EvalConfig, Run, evaluate, load_prediction_runs, summarize

ANSWERS = "ABCDAACB"  # A 3, B 2, C 2, D 1 of 8


def toy_items(answers: str = ANSWERS, tier: str = "Basic") -> list[MCQItem]:
    items = []
    for i, answer in enumerate(answers):
        options = {x: f"option {x} of q{i}" for x in "ABCD"}
        options[answer] = f"right answer of q{i}"
        items.append(MCQItem(f"q-{i}", f"Question {i}?", options, answer, tier))
    return items


class FirstOption:
    """Always the first option shown (letter A), with a letter-shaped probability."""

    def score(self, items):
        return [{"id": it.id, "pred": "A", "probs": {x: 0.7 if x == "A" else 0.1 for x in it.options}}
                for it in items]


class Oracle:
    """Always the option whose text is the right answer, wherever it is shown."""

    def score(self, items):
        out = []
        for it in items:
            pred = next(x for x, text in it.options.items() if text.startswith("right answer"))
            out.append({"id": it.id, "pred": pred, "probs": {x: float(x == pred) for x in it.options}})
        return out


def _orders(scorer, items, k):
    return permutations.score_orders(lambda shifted: ev.score_items(scorer, shifted, 32), items, k)


# ---- cyclic orders --------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "per_order"), [(4, [3 / 8, 2 / 8, 2 / 8, 1 / 8]), (3, [3 / 8, 2 / 8, 2 / 8]),
                                              (2, [3 / 8, 2 / 8])])
def test_first_option_scorer_scores_the_share_of_answers_at_each_shifted_letter(k, per_order):
    # Order s shows original option s at letter A, so "always A" is right exactly on the questions
    # whose answer is the s-th letter: 3, 2, 2, 1 of the 8 answers ABCDAACB.
    items = toy_items()
    acc = permutations.order_accuracies(items, _orders(FirstOption(), items, k))
    assert acc["per_order"] == pytest.approx(per_order)
    assert acc["mean"] == pytest.approx(sum(per_order) / k)
    assert acc["spread"] == pytest.approx(max(per_order) - min(per_order))
    # Averaged over the orders each of the first k options got 0.7 once and 0.1 otherwise: a
    # tie among them, broken toward the earliest letter, so the debiased answer is always A.
    assert acc["debiased"] == pytest.approx(3 / 8)


def test_predictions_are_mapped_back_to_the_original_letters():
    items = toy_items()
    orders = _orders(Oracle(), items, 4)
    assert all(o[it.id]["pred"] == it.answer for o in orders for it in items)
    first = _orders(FirstOption(), items, 4)
    assert [first[s]["q-0"]["pred"] for s in range(4)] == ["A", "B", "C", "D"]  # shown at A in order s
    assert first[2]["q-0"]["probs"] == pytest.approx({"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1})


def test_option_mentions_and_answer_follow_their_option():
    from disease_linking.questions import CodeRef, Mention
    from qa.data import cyclic_shift

    item = toy_items()[2]  # answer C
    item.mentions = [Mention("x", 0, 1, "option:C", [CodeRef("ICD10CM", "E11")])]
    shifted = cyclic_shift(item, 1)
    assert shifted.answer == "B" and shifted.options["B"] == item.options["C"]
    assert shifted.mentions[0].field == "option:B"
    assert cyclic_shift(item, 4) == item


def test_more_orders_than_options_is_a_user_error():
    with pytest.raises(ConfigError, match="permutations=5 exceeds the 4 options"):
        permutations.check_orders(toy_items(), 5)
    with pytest.raises(ConfigError, match="at least 1"):
        permutations.check_orders(toy_items(), 0)


def test_eval_run_with_permutations_reports_orders_and_rereports_them(tmp_path, monkeypatch):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"id": it.id, "question": it.question, "options": it.options,
                                        "answer": it.answer, "tier": it.tier}) + "\n" for it in toy_items()))
    monkeypatch.setattr(ev, "_load_scorer", lambda src: FirstOption())
    out = tmp_path / "eval"
    results = evaluate(EvalConfig(data=str(data), zero_shot=["default"], output=str(out), permutations=4,
                                  tiers=["Basic"], bootstrap=ev.BootstrapConfig(n_resamples=50), plots=False),
                       log=lambda _: None)
    orders = results["methods"]["zero-shot"]["option_orders"]["Basic"]
    assert results["option_orders"] == 4
    assert orders["per_order"] == pytest.approx([3 / 8, 2 / 8, 2 / 8, 1 / 8])
    assert results["runs"][0]["tiers"]["Basic"]["accuracy"] == pytest.approx(3 / 8)  # order 0 = file order
    report = (out / "report.md").read_text()
    assert "Option-order robustness (4 cyclic orders" in report
    assert "| **zero-shot** | Basic | 37.5 | 25.0 | 25.0 | 12.5 | 25.0 | 25.0 | 37.5 |" in report
    # Saved predictions carry every order: re-reporting them needs no model and gives the same table.
    runs = load_prediction_runs(out / "predictions" / "zero-shot.jsonl")
    again = summarize(toy_items(), runs, tiers=["Basic"], boot=ev.BootstrapConfig(n_resamples=50))
    assert again["methods"]["zero-shot"]["option_orders"] == results["methods"]["zero-shot"]["option_orders"]


def test_a_rerun_after_a_kill_scores_only_the_models_not_yet_scored(tmp_path, monkeypatch):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"id": it.id, "question": it.question, "options": it.options,
                                        "answer": it.answer, "tier": it.tier}) + "\n" for it in toy_items()))
    loaded = []

    def scorer_or_kill(src):
        loaded.append(src.path)
        if src.path == "second" and len(loaded) == 2:
            raise KeyboardInterrupt  # killed while loading the second model
        return FirstOption() if src.path == "first" else Oracle()

    monkeypatch.setattr(ev, "_load_scorer", scorer_or_kill)
    out = tmp_path / "eval"
    cfg = EvalConfig(data=str(data), zero_shot=["first", "second"], output=str(out), permutations=2,
                     tiers=["Basic"], bootstrap=ev.BootstrapConfig(n_resamples=50), plots=False)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, log=lambda _: None)
    assert not (out / "results.json").exists() and len(list((out / "scored").iterdir())) == 1
    results = evaluate(cfg, log=lambda _: None)
    assert loaded == ["first", "second", "second"]  # the first model's scores were reused
    accuracy = [r["tiers"]["Basic"]["accuracy"] for r in results["runs"]]
    assert accuracy == [pytest.approx(3 / 8), 1.0]  # the reused run is the first model's, in its place
    evaluate(cfg, log=lambda _: None)
    assert len(loaded) == 3  # nothing left to score
    other = tmp_path / "other.jsonl"  # other questions: nothing is reused
    other.write_text(data.read_text().replace("Question 0?", "Question zero?"))
    evaluate(EvalConfig(**{**cfg.__dict__, "data": str(other), "force": True}), log=lambda _: None)  # another run
    assert len(loaded) == 5


# ---- differences over questions and seeds ------------------------------------------------------------
def test_seed_bootstrap_point_estimate_by_hand_and_certain_case():
    a = [[1, 1, 0, 0], [1, 0, 0, 0]]  # seed-averaged accuracy 3/8
    b = [[0, 1, 0, 0], [0, 1, 0, 0]]  # 2/8
    r = stats.seed_bootstrap_difference(a, b, n_resamples=500, seed=1)
    assert r["difference"] == pytest.approx(1 / 8)
    assert (r["n"], r["n_seeds_a"], r["n_seeds_b"]) == (4, 2, 2)
    assert r == stats.seed_bootstrap_difference(a, b, n_resamples=500, seed=1)  # seeded
    sure = stats.seed_bootstrap_difference([[1] * 10] * 3, [[0] * 10] * 3, n_resamples=500)
    assert (sure["difference"], sure["ci_low"], sure["ci_high"], sure["p_value"]) == (1.0, 1.0, 1.0, 0.0)


def test_seeds_that_disagree_widen_the_interval():
    # Method: seed 0 right on all 10 questions, seed 1 wrong on all; seed-averaged 0.5 everywhere.
    # Baseline: both seeds right on the first 5. Averaging seeds first would hide that the method's
    # result depends on the seed; resampling seeds draws {0, 0} or {1, 1} a quarter of the time
    # each, which moves the difference by +-0.5.
    method = [[1] * 10, [0] * 10]
    base = [[1] * 5 + [0] * 5] * 2
    r = stats.seed_bootstrap_difference(method, base, n_resamples=4000, seed=0)
    assert r["difference"] == pytest.approx(0.0)
    assert r["ci_low"] <= -0.5 and r["ci_high"] >= 0.5
    one_seed = stats.seed_bootstrap_difference([[0.5] * 10], [base[0]], n_resamples=4000, seed=0)
    assert r["ci_high"] - r["ci_low"] > (one_seed["ci_high"] - one_seed["ci_low"]) + 0.4


def test_summarize_reports_the_seed_aware_difference_beside_mcnemar(tmp_path):
    items = toy_items()

    def run(method, seed, right):
        return Run(method, seed, "toy", {it.id: {"pred": it.answer if i in right else
                                                 next(x for x in "ABCD" if x != it.answer),
                                                 "probs": {}, "n_codes": 0} for i, it in enumerate(items)})

    runs = [run("none", 0, {0, 1}), run("none", 1, {0, 2}), run("medtok", 0, {0, 1, 3, 4}), run("medtok", 1, {5})]
    results = summarize(items, runs, tiers=["Basic"], boot=ev.BootstrapConfig(n_resamples=300))
    row = next(r for r in results["seed_bootstrap"] if r["method"] == "medtok" and r["tier"] == "Basic")
    assert row["difference"] == pytest.approx((5 - 4) / 16)
    assert row["ci_low"] < row["difference"] < row["ci_high"]
    assert len([c for c in results["comparisons"] if c["tier"] == "Basic"]) == 2  # McNemar per seed stays
    from eval.report import render_report

    assert "over questions and seeds (paired bootstrap)" in render_report(results)


# ---- the generated findings -------------------------------------------------------------------------
def test_holm_adjustment_by_hand():
    from eval.report import holm_adjusted

    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, 2 x 0.02, max(0.04, previous) ; returned in input order
    assert holm_adjusted([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def _seeded_runs(items, right_by_run):
    def run(method, seed, right):
        return Run(method, seed, "toy", {it.id: {"pred": it.answer if i in right else
                                                 next(x for x in "ABCD" if x != it.answer),
                                                 "probs": {}, "n_codes": 0} for i, it in enumerate(items)})

    return [run(method, seed, right) for (method, seed), right in right_by_run.items()]


def test_findings_say_no_difference_and_not_above_the_floor_when_that_is_the_case():
    from eval.report import findings

    items = toy_items("ABCD" * 10)  # 40 questions, majority letter 25 %
    runs = _seeded_runs(items, {("none", 0): set(range(0, 40, 4)), ("none", 1): set(range(1, 40, 4)),
                                ("medtok", 0): set(range(0, 40, 4)), ("medtok", 1): set(range(2, 40, 4))})
    text = "\n".join(findings(summarize(items, runs, tiers=["Basic"], boot=ev.BootstrapConfig(n_resamples=500))))
    assert "`none` scores 25.0 % on all tiers together (2 seeds)" in text and "**not above the floor**" in text
    assert "  - Basic: no significant difference; the largest is `medtok` +0.0 points" in text
    assert "  - all tiers together: no significant difference" in text


def test_findings_name_a_method_that_is_significantly_better():
    from eval.report import findings

    items = toy_items("ABCD" * 10)
    every = set(range(40))
    runs = _seeded_runs(items, {("none", 0): set(range(0, 40, 4)), ("none", 1): set(range(0, 40, 4)),
                                ("text", 0): set(range(0, 40, 4)), ("text", 1): set(range(0, 40, 4)),
                                ("medtok", 0): every, ("medtok", 1): every - {3}})
    text = "\n".join(findings(summarize(items, runs, tiers=["Basic"], boot=ev.BootstrapConfig(n_resamples=500))))
    assert "  - all tiers together: significant for `medtok` +73.8 points" in text
    assert "  - Basic: significant for `medtok`" in text and "over the 2 methods compared" in text
    assert "`text`" not in text  # not significant: not named
