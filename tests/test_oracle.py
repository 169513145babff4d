"""The channel check: the diagnostic ``oracle`` prefix (one learned token naming the answer) and
the frozen-LLM variant (``optim.train_lm false``: only the prefix module trains)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from commons.config import parse_config
from commons.errors import UserError
from disease_linking.questions import write_jsonl
from qa.data import cyclic_shift
from qa.model import ModelOptions, build_qa_model, load_qa_checkpoint
from qa.prefix_methods import get_method, method_names
from qa.tiny import TINY_CODES, build_tiny_lm, build_tiny_medtok, tiny_questions
from qa.training import DataOptions, OptimOptions, TrainConfig, train
from recipes.pipeline import PipelineConfig


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    data = root / "tiny.jsonl"
    write_jsonl(data, tiny_questions(48))
    return {"llama": str(build_tiny_lm(root / "llama")),
            "medtok": str(build_tiny_medtok(root / "medtok", TINY_CODES)), "data": str(data)}


def run_config(assets, out, mode: str, steps: int = 4) -> TrainConfig:
    """The tiny fixed-seed fine-tune of tests/test_prefix_methods.py."""
    options = ModelOptions(base_model=assets["llama"], dtype="float32", prefix_mode=mode,
                           medtok=assets["medtok"] if get_method(mode).needs_artifact else None)
    return TrainConfig(output_dir=str(out), seed=0, save_every_steps=100, log_every=1, early_stop_patience=0,
                       model=options,
                       data=DataOptions(train_file=assets["data"], val_fraction=0.25, limit_train=16, limit_val=6),
                       optim=OptimOptions(lr=1e-2, projector_lr=1e-2, epochs=1, batch_size=4, warmup_ratio=0.0,
                                          max_steps=steps))


def test_oracle_is_registered_but_never_among_every_method():
    assert get_method("oracle").diagnostic
    assert "oracle" not in method_names() and "oracle" in method_names(diagnostics=True)
    assert "oracle" not in PipelineConfig().methods  # "every registered method" is results only
    assert parse_config(PipelineConfig, ["--methods", "none,oracle"]).methods == ["none", "oracle"]


def test_oracle_token_follows_the_answer_in_every_option_order(assets):
    model = build_qa_model(run_config(assets, None, "oracle").model, lora=False)
    item = tiny_questions(1)[0]
    for shift in range(len(item.options)):
        rotated = cyclic_shift(item, shift)
        prefix = model.encoder.method.item_prefix(rotated)
        assert prefix.tags == ["ABCDE".index(rotated.answer)]
    with pytest.raises(UserError, match="oracle needs the answer"):
        model.encoder.method.item_prefix(dataclasses.replace(item, answer=None))


def test_the_tiny_model_reads_the_oracle_through_the_prefix(assets, tmp_path):
    """What the KG-QA check asks of the real pipeline, at tiny size: the answer reaches the
    letter through the prefix (the tiny LM alone is at chance on these random questions)."""
    cfg = run_config(assets, tmp_path / "oracle", "oracle", steps=150)  # 80 steps reach ~75 %
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, limit_train=0),
                              optim=dataclasses.replace(cfg.optim, epochs=100))
    items = tiny_questions(40, seed=9)
    scored = load_qa_checkpoint(train(cfg)).score(items)
    accuracy = sum(s["pred"] == it.answer for s, it in zip(scored, items, strict=True)) / len(items)
    assert accuracy >= 0.95


def test_frozen_llm_trains_the_prefix_module_only(assets, tmp_path):
    cfg = run_config(assets, tmp_path / "frozen", "medtok", steps=3)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, train_lm=False))
    model = load_qa_checkpoint(train(cfg))
    fresh = build_qa_model(cfg.model, lora=False, seed=cfg.seed)  # the initialisation training started from
    lora_b = [p for n, p in model.lm.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # the adapter is still the identity
    assert not torch.equal(model.projector.net.weight, fresh.projector.net.weight)
    none = dataclasses.replace(run_config(assets, tmp_path / "none", "none"),
                               optim=dataclasses.replace(cfg.optim, train_lm=False))
    with pytest.raises(UserError, match="has none; choose a method with a prefix module"):
        train(none)


def test_letter_logits_keep_float32_resolution_on_a_bf16_model(assets):
    """bf16 logits step by 0.06-0.125 at typical sizes, so two letters often tied and the tie went
    to the earliest letter (26 % of an untrained SmolLM2's KG-QA scorings). The letters' logits
    are computed in float32 from the head's rows instead."""
    options = dataclasses.replace(run_config(assets, None, "none").model, dtype="bfloat16")
    model = build_qa_model(options, lora=False)
    head = model._causal_lm().get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(400.0)  # logits of realistic size (tens), where bf16 rounding bites
    batch = model.encoder.collate([model.encoder.encode(it) for it in tiny_questions(8)])
    batch.pop("labels")
    with torch.no_grad():
        got = model(**batch)["letter_logits"]
        h = model.last_hidden(batch["input_ids"], batch["attention_mask"], batch["prefix_emb"],
                              batch["prefix_mask"], batch["prefix_tags"])
        exact = h.double() @ head.weight.index_select(0, model.letter_ids).double().T
        rounded = head(h).index_select(1, model.letter_ids).double()
    shown = torch.isfinite(got)  # letters beyond a question's options are masked to -inf
    assert got.dtype == torch.float32 and exact[shown].abs().max() > 8
    assert (got.double() - exact)[shown].abs().max() < 1e-3 < (rounded - exact)[shown].abs().max()
