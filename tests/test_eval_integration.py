"""Real QA checkpoints (tiny random LLaMA + tiny MedTok artifact) through eval.evaluate.

Trains `none` and `medtok` for one epoch with qa.training, then evaluates both plus the zero-shot
base model: exercises checkpoint loading, split.json handling and letter-logit scoring for real.
"""

import json

import pytest

from commons.config import from_dict
from disease_linking.questions import write_jsonl
from eval.evaluate import BootstrapConfig, EvalConfig, evaluate
from qa.tiny import TINY_CODES, build_tiny_llama, build_tiny_medtok, tiny_questions

# Two one-epoch trainings of a tiny model: ~25 s of CPU, slower on a busy machine.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from qa.training import TrainConfig, train

    root = tmp_path_factory.mktemp("eval_integration")
    base = build_tiny_llama(root / "llama")
    artifact = build_tiny_medtok(root / "medtok", TINY_CODES)
    items = (tiny_questions(40, seed=1, tier="Intermediate") + tiny_questions(12, seed=2, tier="Basic")
             + tiny_questions(12, seed=3, tier="Expert"))
    for i, it in enumerate(items):  # tiny_questions numbers each call from 0: make ids unique
        it.id = f"{it.tier}-{i:03d}"
    data = root / "linked.jsonl"
    write_jsonl(data, items)
    checkpoints = []
    for mode in ("none", "medtok"):
        cfg = from_dict(TrainConfig, {
            "output_dir": str(root / f"qa-{mode}"), "seed": 0, "eval_batch_size": 16,
            "model": {"base_model": str(base), "dtype": "float32", "prefix_mode": mode,
                      "medtok": str(artifact) if mode != "none" else None, "cutoff_len": 128},
            "data": {"train_file": str(data), "tier": "Intermediate", "val_fraction": 0.25},
            "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-3}})
        train(cfg)
        checkpoints.append(str(root / f"qa-{mode}"))
    return root, data, base, checkpoints


def test_evaluate_real_checkpoints_and_zero_shot(trained):
    root, data, base, checkpoints = trained
    out = root / "eval"
    results = evaluate(EvalConfig(data=str(data), checkpoints=checkpoints, zero_shot=[str(base)],
                                  output=str(out), bootstrap=BootstrapConfig(n_resamples=200)),
                       log=lambda s: None)
    split = json.loads((root / "qa-none" / "split.json").read_text())
    ds = results["dataset"]
    assert ds["Basic"]["n"] == 12 and ds["Expert"]["n"] == 12
    assert ds["Intermediate"]["n"] == len(split["val"]) > 0  # the held-out slice only
    assert results["n_excluded_trained_on"] == len(split["train"])
    assert {r["method"] for r in results["runs"]} == {"zero-shot", "none", "medtok"}
    medtok = next(r for r in results["runs"] if r["method"] == "medtok")
    assert medtok["seed"] == 0
    assert medtok["tiers"]["All"]["mean_codes_used"] > 0  # the prefix really carried codes
    records = [json.loads(x) for x in (out / "predictions" / "medtok.jsonl").read_text().splitlines()]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-3 for r in records)
    assert {c["method"] for c in results["comparisons"]} == {"zero-shot", "medtok"}
    assert (out / "accuracy_by_tier.png").is_file() and (out / "report.md").is_file()


def test_models_scored_in_parallel_processes_give_the_sequential_predictions(trained):
    root, data, base, checkpoints = trained
    predictions = {}
    for workers in (1, 2):
        out = root / f"eval-workers{workers}"
        evaluate(EvalConfig(data=str(data), checkpoints=checkpoints, zero_shot=[str(base)], output=str(out),
                            workers=workers, plots=False, bootstrap=BootstrapConfig(n_resamples=20)),
                 log=lambda s: None)
        predictions[workers] = [json.loads(x) for p in sorted((out / "predictions").iterdir())
                                for x in p.read_text().splitlines()]
        assert len(list((out / "scored").iterdir())) == 3  # one saved run per model, for resuming
    # The same predictions; probabilities equal up to the summation order of 1 thread vs 2.
    assert [(r["method"], r["id"], r["pred"]) for r in predictions[1]] == \
        [(r["method"], r["id"], r["pred"]) for r in predictions[2]]
    for a, b in zip(predictions[1], predictions[2], strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)
