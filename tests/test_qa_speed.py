"""What makes QA training lean must not change what it computes: the lean LoRA forward against
PEFT's, and length-bucketed epochs (every question once, fixed per (seed, epoch), exact resume)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from disease_linking.questions import write_jsonl
from qa.model import ModelOptions, build_qa_model
from qa.tiny import TINY_CODES, build_tiny_llama, build_tiny_medtok, tiny_questions
from qa.training import DataOptions, EpochBatches, OptimOptions, TrainConfig, train


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    data = root / "tiny.jsonl"
    write_jsonl(data, varied_questions(48))
    return {"llama": str(build_tiny_llama(root / "llama")),
            "medtok": str(build_tiny_medtok(root / "medtok", TINY_CODES)), "data": str(data)}


def varied_questions(n: int, seed: int = 0):
    """Tiny questions whose stems differ a lot in length (what bucketing sorts by)."""
    out = []
    for i, it in enumerate(tiny_questions(n, seed)):
        extra = " Fever." * (i * 7 % 11)
        out.append(dataclasses.replace(it, question=it.question + extra))
    return out


def model_for(assets, dtype="float32", dropout=0.1, mode="medtok"):
    opts = ModelOptions(base_model=assets["llama"], medtok=assets["medtok"], dtype=dtype, prefix_mode=mode,
                        cutoff_len=1024)
    opts.lora = dataclasses.replace(opts.lora, dropout=dropout, target_modules=["q_proj", "k_proj", "v_proj",
                                                                              "o_proj"])
    return build_qa_model(opts, seed=0).train()


def peft_forward(model):
    """Undo lean_lora: PEFT's own forward on every layer."""
    from peft.tuners.lora import Linear

    for m in model.modules():
        if type(m) is Linear:
            del m.forward


# ---- lean LoRA ---------------------------------------------------------------------------------------
def test_lean_lora_matches_peft_in_float32_with_dropout_and_gradients(assets):
    model = model_for(assets)
    with torch.no_grad():  # a nonzero B so the adapter contributes
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = model.encoder.collate([model.encoder.encode(it) for it in varied_questions(4)])

    def run():
        torch.manual_seed(3)  # the same dropout draws
        model.zero_grad()
        out = model(**batch)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return out["letter_logits"].detach(), out["loss"].detach(), grads

    lean = run()
    peft_forward(model)
    ref = run()
    assert torch.allclose(lean[0], ref[0], atol=1e-5) and torch.allclose(lean[1], ref[1], atol=1e-6)
    assert lean[2].keys() == ref[2].keys()
    assert all(torch.allclose(lean[2][k], ref[2][k], atol=1e-5, rtol=1e-4) for k in ref[2])


def test_lean_lora_in_bf16_keeps_float32_master_weights_and_close_outputs(assets):
    model = model_for(assets, dtype="bfloat16", dropout=0.0)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # optimizer updates stay exact
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = model.encoder.collate([model.encoder.encode(it) for it in varied_questions(4)])
    lean = model(**batch)["letter_logits"].detach()
    peft_forward(model)
    ref = model(**batch)["letter_logits"].detach()
    assert torch.allclose(lean, ref, atol=0.05, rtol=0.02)


# ---- length-bucketed epochs ------------------------------------------------------------------------------
def batches_for(model, items, buckets, rank=0, world=1, batch_size=4):
    return EpochBatches(items, model.encoder, seed=0, shuffle=True, batch_size=batch_size, grad_accum=1,
                        rank=rank, world=world, length_buckets=buckets)


def test_bucketed_epochs_hold_every_question_once_in_a_fixed_order_with_less_padding(assets):
    model = model_for(assets)
    items = varied_questions(40)
    plain, bucketed = batches_for(model, items, 0), batches_for(model, items, 5)
    for epoch in (0, 1):
        idx = bucketed.indices(epoch)
        assert sorted(i for b in idx for i in b) == list(range(40))
        assert idx == batches_for(model, items, 5).indices(epoch)  # a fresh instance: same batches
    assert bucketed.indices(0) != bucketed.indices(1)

    def padding(batches):
        return sum(int((1 - b["attention_mask"]).sum()) for b in batches.epoch(0))

    assert padding(bucketed) < 0.5 * padding(plain)
    lengths = bucketed.lengths()
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bucketed.indices(0)]
    plain_spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain.indices(0)]
    assert sum(spread) < sum(plain_spread)


def test_bucketed_epoch_resumes_with_exactly_the_remaining_batches(assets):
    model = model_for(assets)
    batches = batches_for(model, varied_questions(40), 3)
    full = list(batches.epoch(1))
    rest = list(batches.epoch(1, skip=4))
    assert len(rest) == len(full) - 4
    for a, b in zip(full[4:], rest, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bucketed_ranks_split_each_global_batch(assets):
    model = model_for(assets)
    items = varied_questions(40)
    ranks = [batches_for(model, items, 5, rank=r, world=2).indices(0) for r in (0, 1)]
    assert sorted(i for r in ranks for b in r for i in b) == list(range(40))
    lengths = batches_for(model, items, 2).lengths()

    def step_spread(ranks):  # length range of what all ranks process at one step
        return sum(max(lengths[i] for i in b0 + b1) - min(lengths[i] for i in b0 + b1) for b0, b1 in zip(*ranks, strict=True))

    plain = [batches_for(model, items, 0, rank=r, world=2).indices(0) for r in (0, 1)]
    assert step_spread(ranks) < 0.5 * step_spread(plain)  # no rank waits for a much longer batch


def test_bucketed_training_killed_and_resumed_matches_an_uninterrupted_run(assets, tmp_path):
    def config(out: Path) -> TrainConfig:
        return TrainConfig(output_dir=str(out), seed=0, save_every_steps=2, log_every=1, early_stop_patience=0,
                           model=ModelOptions(base_model=assets["llama"], medtok=assets["medtok"], dtype="float32"),
                           data=DataOptions(train_file=assets["data"], val_fraction=0.25, limit_train=24, limit_val=4,
                                            length_buckets=2),
                           optim=OptimOptions(lr=1e-2, epochs=2, batch_size=4, warmup_ratio=0.0, max_steps=8))

    class Killed(Exception):
        pass

    def kill_at_5(step):
        if step == 5:
            raise Killed

    full = train(config(tmp_path / "full"))
    with pytest.raises(Killed):
        train(config(tmp_path / "killed"), on_step=kill_at_5)
    resumed = train(config(tmp_path / "killed"))

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["event"] == "train"]

    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "full"), rel=1e-5)
    from safetensors.torch import load_file

    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (full, resumed))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
