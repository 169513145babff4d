"""QA model tests on a tiny random LLaMA (2 layers, hidden 64) and a tiny random MedTok artifact."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
import torch

from commons.errors import UserError
from disease_linking.questions import CodeRef, MCQItem, Mention, write_jsonl
from qa.data import linked_codes, option_set_key, shuffle_options, split_by_option_set
from qa.model import ModelOptions, build_qa_model, load_qa_checkpoint
from qa.prompts import render_prompt
from qa.tiny import TINY_CODES, build_tiny_llama, build_tiny_medtok, tiny_questions


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    llama = build_tiny_llama(root / "llama")
    medtok = build_tiny_medtok(root / "medtok", TINY_CODES)
    data = root / "tiny.jsonl"
    write_jsonl(data, tiny_questions(48))
    return {"root": root, "llama": str(llama), "medtok": str(medtok), "data": str(data)}


def options(assets, **kw) -> ModelOptions:
    base = dict(base_model=assets["llama"], medtok=assets["medtok"], dtype="float32", prefix_mode="medtok")
    return ModelOptions(**{**base, **kw})


def item_with_codes(i: int = 0, n_opts: int = 4) -> MCQItem:
    letters = "ABCDE"[:n_opts]
    stem = "A patient has diabetes and heart failure. Which of the following is most likely?"
    mentions = [Mention("heart failure", 26, 39, "stem", [CodeRef("ICD10CM", "I50.9"), CodeRef("ICD10CM", "E11.9")]),
                Mention("diabetes", 14, 22, "stem", [CodeRef("ICD10CM", "E11.9")]),
                Mention("fever", 0, 5, "option:B", [CodeRef("ICD10CM", "R50.9")]),
                Mention("kidney", 0, 6, "option:A", [CodeRef("ICD10CM", "N18.9")])]
    return MCQItem(f"q{i}", stem, {x: f"option {x.lower()} text" for x in letters}, "B", "Intermediate",
                   mentions=mentions)


# ---- data -------------------------------------------------------------------------------------------------
def test_split_by_option_set_keeps_groups_whole():
    items = tiny_questions(200, seed=3)
    train, val = split_by_option_set(items, 0.2, seed=1)
    assert len(train) + len(val) == 200 and 0.15 <= len(val) / 200 <= 0.35
    assert not {option_set_key(i) for i in train} & {option_set_key(i) for i in val}
    assert split_by_option_set(list(reversed(items)), 0.2, seed=1)[1] != [] and \
        {i.id for i in split_by_option_set(list(reversed(items)), 0.2, seed=1)[1]} == {i.id for i in val}


def test_shuffle_options_relabels_answer_and_option_mentions():
    item = item_with_codes()
    seen = set()
    for seed in range(20):
        s = shuffle_options(item, seed)
        assert sorted(s.options.values()) == sorted(item.options.values())
        assert s.options[s.answer] == item.options[item.answer]
        for m in s.mentions:
            if m.field.startswith("option:"):
                old = next(o for o in item.mentions if o.text == m.text).field.split(":")[1]
                assert s.options[m.field.split(":")[1]] == item.options[old]
        seen.add(s.answer)
        assert shuffle_options(item, seed) == s  # deterministic
    assert len(seen) > 1


def test_linked_codes_order_dedup_and_fields():
    item = item_with_codes()
    assert linked_codes(item, "stem", 1, 8) == ["ICD10CM:E11.9", "ICD10CM:I50.9"]  # text order
    assert linked_codes(item, "stem", 2, 8) == ["ICD10CM:E11.9", "ICD10CM:I50.9"]  # deduplicated
    assert linked_codes(item, "stem+options", 1, 8) == ["ICD10CM:E11.9", "ICD10CM:I50.9", "ICD10CM:N18.9",
                                                         "ICD10CM:R50.9"]  # options in letter order
    assert linked_codes(item, "stem+options", 1, 3) == ["ICD10CM:E11.9", "ICD10CM:I50.9", "ICD10CM:N18.9"]


# ---- model ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def medtok_model(assets):
    torch.manual_seed(0)
    return build_qa_model(options(assets, code_fields="stem+options"), seed=0)


def manual_letter_logits(model, item: MCQItem) -> torch.Tensor:
    """One question alone, without padding: full LM forward on [projected prefix; prompt embeddings]."""
    enc = model.encoder.encode(item)
    causal = model._causal_lm()
    tok = causal.get_input_embeddings()(torch.tensor([enc.input_ids]))
    if enc.prefix.embeddings is not None and len(enc.prefix.embeddings):
        tok = torch.cat([model.projector(enc.prefix.embeddings)[None], tok], dim=1)
    logits = causal(inputs_embeds=tok).logits[0, -1]
    return logits, enc


def test_only_the_answer_letter_is_supervised(medtok_model):
    items = [item_with_codes(0), tiny_questions(3)[1]]
    batch = medtok_model.encoder.collate([medtok_model.encoder.encode(i) for i in items])
    letter_ids = medtok_model.encoder.letter_ids
    assert batch["labels"].tolist() == [letter_ids[i.answer] for i in items]
    with torch.no_grad():
        loss = medtok_model(**batch)["loss"]
        manual = [torch.nn.functional.cross_entropy(manual_letter_logits(medtok_model, i)[0][None],
                                                    torch.tensor([letter_ids[i.answer]])) for i in items]
    assert torch.allclose(loss, torch.stack(manual).mean(), atol=1e-4)


def test_prefix_under_left_padding_matches_unpadded_manual(medtok_model):
    items = [item_with_codes(0, 5), tiny_questions(8)[3], item_with_codes(1, 2)]  # 4 codes, 0 codes, 4 codes
    batch = medtok_model.encoder.collate([medtok_model.encoder.encode(i) for i in items])
    assert batch["prefix_mask"].sum(1).tolist() == [4, 0, 4]
    emb, mask, pos = medtok_model.build_inputs(batch["input_ids"], batch["attention_mask"], batch["prefix_emb"],
                                               batch["prefix_mask"])
    for row in range(len(items)):
        n = int(mask[row].sum())
        assert mask[row, -n:].all() and not mask[row, :-n].any()  # left padding, contiguous real part
        assert pos[row, -n:].tolist() == list(range(n))
    with torch.no_grad():
        batched = medtok_model(**batch)["letter_logits"]
        for row, it in enumerate(items):
            logits, _ = manual_letter_logits(medtok_model, it)
            k = len(it.options)
            want = logits[[medtok_model.encoder.letter_ids[x] for x in it.options]]
            assert torch.allclose(batched[row, :k], want, atol=1e-4)
            assert torch.isinf(batched[row, k:]).all()


def test_score_probabilities_and_independence_from_batch(medtok_model):
    items = [item_with_codes(0, 5), tiny_questions(8)[3], item_with_codes(1, 2)]
    together = medtok_model.score(items, batch_size=3)
    alone = [medtok_model.score([i], batch_size=1)[0] for i in items]
    for t, a, it in zip(together, alone, items, strict=True):
        assert set(t["probs"]) == set(it.options)
        assert math.isclose(sum(t["probs"].values()), 1.0, rel_tol=1e-5)
        assert t["pred"] == max(t["probs"], key=t["probs"].get)
        assert all(math.isclose(t["probs"][x], a["probs"][x], abs_tol=1e-5) for x in it.options)
    assert [t["n_codes"] for t in together] == [4, 0, 4]


def test_prefix_modes(assets):
    item = item_with_codes()
    mean = build_qa_model(options(assets, prefix_mode="medtok-mean"), lora=False)
    p = mean.method.item_prefix(item)
    assert p.embeddings.shape == (1, 32) and p.codes == ["ICD10CM:E11.9", "ICD10CM:I50.9"]
    text = build_qa_model(options(assets, prefix_mode="text"), lora=False)
    assert text.projector is None
    prompt = render_prompt(text.tokenizer, item, text.method.item_prefix(item).context)
    assert "Type 2 diabetes mellitus" in prompt and "Heart failure, unspecified" in prompt
    shuffled = build_qa_model(options(assets, prefix_mode="shuffled", shuffle_seed=1), lora=False)
    a, b = shuffled.method.item_prefix(item), shuffled.method.item_prefix(item)
    assert a.codes == b.codes and len(a.codes) == 2  # deterministic, same token budget
    assert [shuffled.method.item_prefix(dataclasses.replace(item, id=f"x{i}")).codes for i in range(6)] != \
        [a.codes] * 6  # other questions get other codes
    none = build_qa_model(options(assets, prefix_mode="none", medtok=None), lora=False)
    assert none.score([item])[0]["n_codes"] == 0
    with pytest.raises(UserError, match="needs a MedTok artifact"):
        build_qa_model(options(assets, prefix_mode="medtok", medtok=None), lora=False)


def test_linked_codes_missing_from_the_artifact_use_their_nearest_ancestor(assets):
    """A quick artifact holds categories; the linker emits full codes (E11.9 -> E11 there)."""
    import pandas as pd

    from qa.tiny import build_tiny_medtok

    coarse = build_tiny_medtok(Path(assets["root"]) / "coarse", [
        ("ICD10CM", "E11", "Type 2 diabetes mellitus"), ("ICD10CM", "I50", "Heart failure")])
    model = build_qa_model(options(assets, medtok=str(coarse)), lora=False)
    item = item_with_codes()
    item.mentions.append(Mention("unknown", 0, 7, "stem", [CodeRef("ICD10CM", "Z99.9")]))
    prefix = model.method.item_prefix(item)
    # E11.9 (twice) -> E11 once, I50.9 -> I50; Z99.9 has no known ancestor and is dropped.
    assert prefix.codes == ["ICD10CM:E11", "ICD10CM:I50"]
    assert prefix.embeddings.shape[0] == 2
    assert set(pd.read_parquet(Path(coarse) / "vocab.parquet")["code"]) == {"E11", "I50"}


def test_save_load_round_trip_identical(assets, medtok_model, tmp_path):
    with torch.no_grad():  # make the adapter and projector non-trivial
        for p in medtok_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    items = [item_with_codes(0), *tiny_questions(4)]
    before = medtok_model.score(items)
    medtok_model.save_checkpoint(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "projector.safetensors", "qa_config.json"} <= files
    cfg = json.loads((tmp_path / "ckpt" / "qa_config.json").read_text())
    assert cfg["prefix_mode"] == "medtok" and len(cfg["medtok_token_table_sha256"]) == 64
    after = load_qa_checkpoint(tmp_path / "ckpt").score(items)
    assert after == before
    with pytest.raises(UserError, match="not a QA checkpoint"):
        load_qa_checkpoint(tmp_path / "nowhere")


# ---- training ---------------------------------------------------------------------------------------------
def train_config(assets, out: Path, **optim):
    from qa.training import DataOptions, OptimOptions, TrainConfig

    return TrainConfig(output_dir=str(out), seed=0, eval_batch_size=16, save_every_steps=2, log_every=1,
                       early_stop_patience=0,
                       model=options(assets, lora=dataclasses.replace(ModelOptions().lora, dropout=0.1)),
                       data=DataOptions(train_file=assets["data"], val_fraction=0.25, limit_train=16, limit_val=6),
                       optim=OptimOptions(lr=1e-2, projector_lr=1e-2, epochs=2, batch_size=4, warmup_ratio=0.0,
                                          **optim))


def trainable(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {**load_file(str(path / "adapter_model.safetensors")), **load_file(str(path / "projector.safetensors"))}


def test_training_lowers_loss_and_resumes_at_the_same_step(assets, tmp_path):
    from qa.training import train

    full = train(train_config(assets, tmp_path / "full", max_steps=6))
    records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert len(losses) == 6 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert {"split.json", "train_config.yaml", "metrics.jsonl", "qa_config.json"} <= {p.name for p in full.iterdir()}
    split = json.loads((full / "split.json").read_text())
    assert split["split_by"] == "option_set" and not set(split["train"]) & set(split["val"])

    class Killed(Exception):
        pass

    def kill_at_3(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(train_config(assets, tmp_path / "killed", max_steps=6), on_step=kill_at_3)
    state = json.loads((tmp_path / "killed" / "_resume" / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # the last saved step before the kill
    resumed = train(train_config(assets, tmp_path / "killed", max_steps=6))
    log = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 2, "epoch": 0} in log
    assert [r["step"] for r in log if r["event"] == "train"] == list(range(1, 7))
    a, b = trainable(full), trainable(resumed)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_deepspeed_config_auto_values_filled(tmp_path):
    from qa.training import TrainConfig, filled_deepspeed_config

    cfg = TrainConfig()
    cfg.optim.batch_size, cfg.optim.grad_accum = 4, 2
    cfg.model.dtype = "bfloat16"
    ds = filled_deepspeed_config(Path(__file__).resolve().parent.parent / "ds_config.json", cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["train_batch_size"] == 16
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage"] == 2
    assert "auto" not in json.dumps(ds)
    cfg.model.dtype = "float32"
    ds = filled_deepspeed_config(Path(__file__).resolve().parent.parent / "ds_config.json", cfg, world_size=2)
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False


def test_train_cli_shortcuts():
    from recipes.finetune import expand_shortcuts

    assert expand_shortcuts(["--prefix_mode", "medtok", "--prefix-mode=none", "--medtok", "x", "--optim.lr", "1"]) == [
        "--model.prefix_mode", "medtok", "--model.prefix_mode=none", "--model.medtok", "x", "--optim.lr", "1"]


# ---- ask --------------------------------------------------------------------------------------------------
def test_ask_parses_and_survives_bad_input(assets, medtok_model, tmp_path, capsys):
    from qa.ask import Asker, parse_question, read_blocks, run

    item = parse_question("Which is it?\nA: diabetes\nB: fever")
    assert item.options == {"A": "diabetes", "B": "fever"} and item.answer is None
    stream = io.StringIO("no options here\n\nOnly one?\nA: x\n\n{bad json\n"
                         + json.dumps({"question": "Which?", "options": {"A": "a", "B": "b", "C": "c"}}) + "\n"
                         + "Which one is it?\nA: heart failure\nB: pneumonia\n")
    out = io.StringIO()
    errors = run(Asker(medtok_model), read_blocks(stream, interactive=False), as_json=True, out=out)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert errors == 3 and [("error" in r) for r in lines] == [True, True, True, False, False]
    assert "option" in lines[0]["error"] and "not valid JSON" in lines[2]["error"]
    good = lines[-1]
    assert good["answer"] in ("A", "B") and math.isclose(sum(good["probs"].values()), 1.0, rel_tol=1e-5)


def test_ask_cli_unknown_checkpoint(tmp_path, capsys):
    from recipes.ask import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "missing"), "--question", "Q?\nA: a\nB: b", "--no-linker"])
    assert exit_info.value.code == 2
    assert "not a QA checkpoint" in capsys.readouterr().err


# ---- token-budgeted slices (optim.max_batch_tokens) -------------------------------------------------------
class _PlainAccelerator:
    """What backward_in_slices asks of accelerate, on one process."""

    @staticmethod
    def backward(loss):
        loss.backward()

    @staticmethod
    def no_sync(model):
        import contextlib

        return contextlib.nullcontext()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_a_batch_run_in_slices_gives_the_whole_batch_loss_and_gradients(assets):
    from qa.model import LoraOptions
    from qa.training import backward_in_slices, row_slices

    model = build_qa_model(options(assets, lora=LoraOptions(dropout=0.0)), lora=True, seed=0)
    model.train()
    items = tiny_questions(6, seed=5)
    items[2].question += " It began after a long flight and has lasted for three days without relief." * 3
    batch = model.encoder.collate(model.encoder.encode_many(items))
    width = batch["input_ids"].shape[1] + batch["prefix_mask"].shape[1]
    slices = row_slices(batch, 2 * width)
    assert [s["input_ids"].shape[0] for s in slices] == [2, 2, 2]
    assert all(s["input_ids"].shape[0] * (s["input_ids"].shape[1] + s["prefix_mask"].shape[1]) <= 2 * width
               for s in slices)
    assert sum(s["input_ids"].shape[1] < batch["input_ids"].shape[1] for s in slices) == 2  # padding dropped
    assert row_slices(batch, 0) == [batch] and row_slices(batch, 6 * width) == [batch]

    whole = model(**batch)["loss"]
    whole.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    sliced = backward_in_slices(model, batch, _PlainAccelerator(), 2 * width)
    assert float(sliced) == pytest.approx(float(whole.detach()), abs=1e-6)
    got = _grads(model)
    assert got.keys() == expected.keys() and len(got) > 0
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-6, rtol=1e-4), name


def test_the_last_step_is_logged_off_the_log_every_grid(assets, tmp_path):
    """A fine-tune shorter than log_every still writes its loss (the curve is not empty)."""
    from qa.training import train

    cfg = dataclasses.replace(train_config(assets, tmp_path / "short", max_steps=3), log_every=5)
    train(cfg)
    records = [json.loads(x) for x in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_records] == [3] and math.isfinite(train_records[0]["loss"])
