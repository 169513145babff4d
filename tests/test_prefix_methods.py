"""Prefix methods as plug-ins: the registry, the structure-keeping methods, a method defined only
in this module, and any causal LM (tiny random LLaMA, GPT-2 and GPT-NeoX)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from commons.config import parse_config
from commons.errors import ConfigError
from disease_linking.questions import CodeRef, MCQItem, Mention, write_jsonl
from eval.evaluate import EvalConfig, evaluate
from finetune.train import main as finetune_main
from qa.checkpoint import find_checkpoint
from qa.data import cyclic_shift, shuffle_options
from qa.model import ModelOptions, build_qa_model, load_qa_checkpoint
from qa.prefix_methods import ItemPrefix, PrefixMethod, get_method, method_names, register, unregister
from qa.prefix_methods.medtok_cosine import option_features
from qa.tiny import TINY_CODES, build_tiny_lm, build_tiny_medtok, tiny_questions
from qa.training import DataOptions, OptimOptions, TrainConfig, train

# Losses of the first 4 optimizer steps and the option probabilities of the first scored question,
# measured on the tiny fixed-seed model before prefix methods became plug-ins: the refactor (and
# any later change) must not move them.
PINNED = {
    "none": ([5.661182880401611, 5.76460599899292, 5.492989540100098, 5.322687149047852],
             [0.2588860094547272, 0.19032105803489685, 0.34504234790802, 0.20575062930583954]),
    "text": ([5.644435882568359, 5.748307704925537, 5.511958122253418, 5.330973148345947],
             [0.2617496848106384, 0.1886889636516571, 0.3315037786960602, 0.2180575281381607]),
    "medtok": ([5.6616363525390625, 5.769918918609619, 5.498431205749512, 5.342493057250977],
               [0.263508141040802, 0.19016273319721222, 0.34074750542640686, 0.20558162033557892]),
    "medtok-mean": ([5.6616363525390625, 5.769918918609619, 5.498431205749512, 5.342493057250977],
                    [0.263508141040802, 0.19016273319721222, 0.34074750542640686, 0.20558162033557892]),
    "medtok-cosine": ([5.662394046783447, 5.740818977355957, 5.48380708694458, 5.310293197631836],
                      [0.25543397665023804, 0.19189895689487457, 0.3439924418926239, 0.20867465436458588]),
    "shuffled": ([5.664560317993164, 5.768399238586426, 5.491508483886719, 5.3424153327941895],
                 [0.26362767815589905, 0.19109658896923065, 0.3412539064884186, 0.20402182638645172]),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    data = root / "tiny.jsonl"
    write_jsonl(data, tiny_questions(48))
    return {"root": root, "llama": str(build_tiny_lm(root / "llama")),
            "medtok": str(build_tiny_medtok(root / "medtok", TINY_CODES)), "data": str(data)}


def run_config(assets, out: Path, mode: str, base: str | None = None, steps: int = 4, **model) -> TrainConfig:
    options = ModelOptions(base_model=base or assets["llama"], dtype="float32", prefix_mode=mode,
                           medtok=None if mode == "none" else assets["medtok"], **model)
    return TrainConfig(output_dir=str(out), seed=0, save_every_steps=100, log_every=1, early_stop_patience=0,
                       model=options,
                       data=DataOptions(train_file=assets["data"], val_fraction=0.25, limit_train=16, limit_val=6),
                       optim=OptimOptions(lr=1e-2, projector_lr=1e-2, epochs=1, batch_size=4, warmup_ratio=0.0,
                                          max_steps=steps))


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


def item_with_option_codes() -> MCQItem:
    stem = "A patient has diabetes. Which drug treats it?"
    return MCQItem("q-opt", stem, {"A": "fever", "B": "pneumonia", "C": "metformin"}, "C", "Intermediate", mentions=[
        Mention("diabetes", 14, 22, "stem", [CodeRef("ICD10CM", "E11.9")]),
        Mention("fever", 0, 5, "option:A", [CodeRef("ICD10CM", "R50.9")]),
        Mention("pneumonia", 0, 9, "option:B", [CodeRef("ICD10CM", "J18.9")]),
        Mention("metformin", 0, 9, "option:C", [CodeRef("ATC", "A10BA02")])])


# ---- the registry ---------------------------------------------------------------------------------
def test_registry_holds_every_builtin_in_report_order():
    names = method_names()
    assert names[:5] == ["none", "text", "medtok-mean", "medtok", "medtok-options"]
    assert {"medtok-attn", "shuffled"} <= set(names)
    assert not get_method("none").needs_artifact and not get_method("text").trainable


def test_unknown_method_fails_at_parse_time_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown prefix method 'medtk'; registered: none, text"):
        parse_config(TrainConfig, ["--model.prefix_mode", "medtk"])
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        finetune_main(["--prefix_mode", "medtk", "--output_dir", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown prefix method 'medtk'")
    assert not out.exists()


def test_help_lists_the_registered_methods(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--help"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "--model.prefix_mode" in x)
    assert all(name in line for name in method_names())


# ---- existing methods: unchanged numbers -------------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(PINNED))
def test_existing_methods_keep_their_pinned_losses_and_scores(assets, tmp_path, mode):
    best = train(run_config(assets, tmp_path / mode, mode))
    losses, probs = PINNED[mode]
    assert train_losses(tmp_path / mode) == pytest.approx(losses, rel=1e-4)
    scored = load_qa_checkpoint(best).score(tiny_questions(6, seed=5))[0]["probs"]
    assert list(scored.values()) == pytest.approx(probs, abs=1e-4)


# ---- medtok-options ------------------------------------------------------------------------------------
def test_medtok_options_tags_each_code_with_its_field_and_follows_shuffles(assets):
    model = build_qa_model(run_config(assets, Path("unused"), "medtok-options").model, lora=False)
    item = item_with_option_codes()
    prefix = model.method.item_prefix(item)
    assert prefix.codes == ["ICD10CM:E11.9", "ICD10CM:R50.9", "ICD10CM:J18.9", "ATC:A10BA02"]
    assert prefix.tags == [0, 1, 2, 3]  # stem, A, B, C
    shuffled = shuffle_options(item, seed=3)
    moved = model.method.item_prefix(shuffled)
    metformin_letter = next(k for k, v in shuffled.options.items() if v == "metformin")
    assert moved.tags[moved.codes.index("ATC:A10BA02")] == "ABCDE".index(metformin_letter) + 1
    # The tag embedding is added: the same code under another tag gives another prefix token.
    batch = model.encoder.collate([model.encoder.encode(item)])
    emb, mask, _ = model.build_inputs(batch["input_ids"], batch["attention_mask"], batch["prefix_emb"],
                                      batch["prefix_mask"], batch["prefix_tags"])
    retagged, _, _ = model.build_inputs(batch["input_ids"], batch["attention_mask"], batch["prefix_emb"],
                                        batch["prefix_mask"], torch.zeros_like(batch["prefix_tags"]))
    n = int(batch["prefix_mask"].sum())
    first = emb.shape[1] - int(mask[0].sum())
    assert not torch.allclose(emb[0, first:first + n], retagged[0, first:first + n])


# ---- medtok-attn -----------------------------------------------------------------------------------------
def test_medtok_attn_pools_a_fixed_number_of_question_aware_tokens(assets):
    model = build_qa_model(run_config(assets, Path("unused"), "medtok-attn", prefix_tokens=3).model, lora=False)
    item = item_with_option_codes()
    other = dataclasses.replace(item, id="q-other", question="Which of the following is a gene of the liver?")
    no_codes = dataclasses.replace(item, id="q-none", mentions=[])
    batch = model.encoder.collate([model.encoder.encode(x) for x in (item, other, no_codes)])
    assert batch["prefix_mask"].sum(1).tolist() == [4, 4, 0]  # stem + option codes before pooling
    emb, mask, _ = model.build_inputs(batch["input_ids"], batch["attention_mask"], batch["prefix_emb"],
                                      batch["prefix_mask"], batch["prefix_tags"])
    n_prompt = batch["attention_mask"].sum(1)
    assert (mask.sum(1) - n_prompt).tolist() == [3, 3, 0]  # 3 pooled tokens; none without codes
    width = emb.shape[1]
    pooled = [emb[r, width - int(mask[r].sum()): width - int(n_prompt[r])] for r in (0, 1)]
    assert not torch.allclose(pooled[0], pooled[1])  # same codes, other question: other tokens
    assert torch.isfinite(emb).all()


# ---- medtok-cosine ---------------------------------------------------------------------------------------
def test_medtok_cosine_features_match_a_hand_computed_example():
    stem = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    options = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.zeros(0, 2)]
    features = option_features(stem, options)
    # cosines 1, 0 (third option has no codes): mean 0.5, sd 0.5 over the coded options
    assert features[:, 0].tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-5)
    assert features[:, 1].tolist() == pytest.approx([1 / (1 + math.exp(-20)), math.exp(-20) / (1 + math.exp(-20)), 0.0])
    assert features[:, 2].tolist() == [1.0, 1.0, 0.0]
    assert option_features(torch.zeros(0, 2), options).eq(0).all()  # no stem codes: nothing to compare


def test_medtok_cosine_tokens_follow_their_option_through_rotations(assets):
    model = build_qa_model(run_config(assets, Path("unused"), "medtok-cosine").model, lora=False)
    item = item_with_option_codes()
    prefix = model.method.item_prefix(item)
    assert prefix.codes == ["ICD10CM:E11.9", "ICD10CM:R50.9", "ICD10CM:J18.9", "ATC:A10BA02"]
    assert prefix.embeddings.shape == (3, 3) and prefix.tags == [0, 1, 2]  # one token per option
    metformin = prefix.embeddings[2]
    for shift in (1, 2):
        moved = cyclic_shift(item, shift)
        letter = next(k for k, v in moved.options.items() if v == "metformin")
        rotated = model.method.item_prefix(moved)
        assert rotated.embeddings["ABC".index(letter)].tolist() == pytest.approx(metformin.tolist())
        assert rotated.tags == [0, 1, 2]
    assert model.method.item_prefix(dataclasses.replace(item, mentions=[])).embeddings is None  # nothing to compare


# ---- both new methods (and the test-only one) go through training, scoring, saving, reloading ----------
@pytest.mark.parametrize("mode", ["medtok-options", "medtok-attn", "medtok-cosine"])
def test_new_methods_train_save_reload_and_score_identically(assets, tmp_path, mode):
    best = train(run_config(assets, tmp_path / mode, mode, steps=3))
    losses = train_losses(tmp_path / mode)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    items = [item_with_option_codes(), *tiny_questions(5, seed=2)]
    trained = build_qa_model(run_config(assets, tmp_path, mode).model, lora=False)
    reloaded = load_qa_checkpoint(best)
    assert reloaded.options.prefix_mode == mode
    assert reloaded.score(items) == load_qa_checkpoint(best).score(items)
    assert trained.projector.state_dict().keys() == reloaded.projector.state_dict().keys()


class FirstCodeOnly(PrefixMethod):
    """A method that exists only in this test (registered inside it, so other test modules, e.g. the
    README summary's count of registered methods, never see it): the first linked code, one token."""

    name = "test-first-code"
    summary = "first linked code only (test plug-in)"
    label = "first code (test)"
    color = "#123456"
    order = 75

    def item_prefix(self, item) -> ItemPrefix:
        codes = self.codes.known_codes(item)[:1]
        return ItemPrefix(codes, self.codes.embed(codes))


def test_a_method_registered_in_a_test_module_runs_everywhere(assets, tmp_path):
    register(FirstCodeOnly)
    try:
        run = tmp_path / "first"
        best = train(run_config(assets, run, "test-first-code", steps=2))
        model = load_qa_checkpoint(best)
        assert model.options.prefix_mode == "test-first-code"
        assert {s["n_codes"] for s in model.score(tiny_questions(6, seed=1))} <= {0, 1}
        results = evaluate(EvalConfig(data=assets["data"], checkpoints=[str(run)], output=str(tmp_path / "eval"),
                                      bootstrap=dataclasses.replace(EvalConfig().bootstrap, n_resamples=50),
                                      baseline="test-first-code", plots=True), log=lambda _: None)
        assert "test-first-code" in results["methods"]
        report = (tmp_path / "eval" / "report.md").read_text()
        assert "first code (test)" in report
        from eval.report import method_color, method_rank

        assert method_color("test-first-code", ["test-first-code"]) == "#123456"
        assert method_rank("medtok") < method_rank("test-first-code") < method_rank("shuffled")
    finally:
        unregister("test-first-code")
    assert "test-first-code" not in method_names()


# ---- any causal LM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_other_architectures_train_score_save_and_reload(assets, tmp_path, arch):
    base = str(build_tiny_lm(tmp_path / arch, arch))
    best = train(run_config(assets, tmp_path / "run", "medtok", base=base, steps=3))
    assert len(train_losses(tmp_path / "run")) == 3
    items = [item_with_option_codes(), *tiny_questions(5, seed=2)]
    model = load_qa_checkpoint(best)
    together = model.score(items, batch_size=6)
    alone = [model.score([it], batch_size=1)[0] for it in items]  # left padding changes nothing
    for a, b in zip(together, alone, strict=True):
        assert a["pred"] == b["pred"] and all(math.isclose(a["probs"][k], b["probs"][k], abs_tol=1e-4) for k in a["probs"])
    assert load_qa_checkpoint(find_checkpoint(tmp_path / "run")).score(items, batch_size=6) == together
