"""recipes.recipe: the held-out floor, the interval and test, and the per-epoch curve it reads."""

import json

import pytest

from commons.errors import ConfigError
from recipes import recipe


def _question(qid, answer, n_options=4):
    letters = "ABCDE"[:n_options]
    return {"id": qid, "question": f"question {qid}?", "tier": "Intermediate",
            "options": {k: f"option {k} of {qid}" for k in letters}, "answer": answer}


@pytest.fixture
def run(tmp_path):
    """A finished-looking run folder: split.json over 6 held-out questions, a metrics.jsonl."""
    answers = ["A", "B", "B", "B", "C", "D"]
    items = [_question(f"q{i}", a) for i, a in enumerate(answers)] + [_question("t0", "A")]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(it) + "\n" for it in items))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "split.json").write_text(json.dumps({"train": ["t0"], "val": [f"q{i}" for i in range(6)]}))
    records = [{"event": "train", "step": 1},
               {"event": "eval", "epoch": 1, "epoch_complete": True, "val_acc": 2 / 6, "n_val": 6},
               {"event": "eval", "epoch": 2, "epoch_complete": False, "val_acc": 1.0, "n_val": 6},
               {"event": "eval", "epoch": 2, "epoch_complete": True, "val_acc": 3 / 6, "n_val": 6},
               {"event": "eval", "epoch": 2, "epoch_complete": True, "val_acc": 4 / 6, "n_val": 6}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder, questions


def test_floor_is_the_majority_letter_of_the_held_out_slice_only(run):
    folder, questions = run
    floor = recipe.heldout_floor(folder, questions)
    assert floor == {"n": 6, "majority_letter": "B", "majority_rate": 0.5, "chance": 0.25}


def test_epoch_curve_keeps_complete_epochs_and_the_last_record_of_each(run):
    folder, _ = run
    evals = recipe.epoch_evals(folder)
    assert [(e["epoch"], e["val_acc"]) for e in evals] == [(1, 2 / 6), (2, 4 / 6)]


def test_wilson_interval_matches_the_closed_form():
    low, high = recipe.wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = recipe.wilson(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and 0 < high < 0.35


def test_above_majority_is_an_exact_one_sided_binomial_test():
    # P(X >= 8 | n=10, p=0.5) = (45 + 10 + 1) / 1024
    assert recipe.p_above(8, 10, 0.5) == pytest.approx(56 / 1024)
    summary = recipe.summarise("r", [{"epoch": 1, "val_acc": 0.8, "n_val": 10}],
                               {"majority_rate": 0.5}, alpha=0.06)
    (epoch,) = summary["epochs"]
    assert epoch["correct"] == 8 and epoch["above_majority"] and summary["best_epoch"] == 1


def test_recipe_overrides_win_over_the_common_ones():
    cfg = recipe.RecipeConfig(recipes={"wide": {"model.lora.target_modules": ["q_proj", "up_proj"],
                                                "optim.lr": 1e-4}},
                              common={"optim.lr": 3e-4, "model.medtok": None})
    argv = recipe.finetune_argv(cfg, "wide")
    assert argv[argv.index("--model.lora.target_modules") + 1] == "q_proj,up_proj"
    assert argv[argv.index("--model.medtok") + 1] == "null"
    assert argv.count("--optim.lr") == 1 and argv[argv.index("--optim.lr") + 1] == "0.0001"  # the recipe wins


@pytest.mark.parametrize("recipes, message", [({}, "recipes is empty"),
                                               ({"a/b": {}}, "names a folder"),
                                               ({"a": ["optim.lr"]}, "must map option names")])
def test_bad_recipes_are_config_errors(recipes, message):
    with pytest.raises(ConfigError, match=message):
        recipe.RecipeConfig(recipes=recipes)


def test_collect_only_publishes_the_curve_into_the_readme_block(run, tmp_path):
    folder, questions = run
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- recipe:sweep -->\nold\n<!-- /recipe:sweep -->\nend\n")
    cfg = recipe.RecipeConfig(output=str(tmp_path), recipes={"run": {"optim.lr": 1e-4}, "later": {}},
                              questions=str(questions), train=False, page=str(readme))
    results = recipe.sweep(cfg)
    assert list(results["recipes"]) == ["run"]  # a recipe not started yet is left out, not an error
    text = readme.read_text()
    assert "\nold\n" not in text and text.startswith("intro") and text.rstrip().endswith("end")
    assert "| run | `optim.lr=0.0001` | 2 | 66.7 |" in text and "majority letter B = 50.0 %" in text
    assert (tmp_path / "docs/results/recipe_sweep/recipes.png").is_file()
    assert "No recipe is above the majority-letter rate" in text  # 4 of 6 right vs a 50 % floor


def test_collect_before_any_recipe_started_says_how_to_start(tmp_path):
    cfg = recipe.RecipeConfig(output=str(tmp_path), questions="x.jsonl", train=False)
    with pytest.raises(ConfigError, match="no recipe .* has started"):
        recipe.sweep(cfg)
