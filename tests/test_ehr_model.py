"""EhrMamba: every code-embedding variant trains 3 steps with pinned losses; MPF; unseen codes under
MedTok; resume after a kill gives the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from ehr_fixtures import tiny_medtok, write_mimic_like
from safetensors.torch import load_file

from commons.errors import ConfigError
from ehr.code_embeddings import EmbeddingOptions, build_code_embedding, variant_names
from ehr.data import DataOptions, prepare
from ehr.model import ModelOptions, collate
from ehr.sequences import task_token
from ehr.train import EhrTrainConfig, TrainOptions, build_model, load_prepared, train


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ehr")
    write_mimic_like(root / "meds")
    prepare(DataOptions(source="mimic_iv", max_len=64), root / "meds", root / "prep")
    return root / "prep", tiny_medtok(root / "medtok"), root


def tiny_text_encoder(root):
    from qa.tiny import build_tiny_lm

    path = root / "text_encoder"
    if not path.exists():
        build_tiny_lm(path, "gpt2", seed=0, hidden=16, layers=1)
    return str(path)


def config(prepared, variant, stage, out, backbone="transformer", steps=3, save_every=50):
    prep, medtok, root = prepared
    text = tiny_text_encoder(root) if variant == "text" else None
    return EhrTrainConfig(
        data=str(prep), output_dir=str(out), stage=stage,
        model=ModelOptions(backbone=backbone, hidden=16, layers=1, state_size=4, code_embedding=variant,
                           embedding=EmbeddingOptions(medtok=str(medtok), projector_hidden=8, text_encoder=text)),
        train=TrainOptions(steps=steps, batch_size=2, save_every=save_every, seed=0))


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


# 3 steps, batch 2, hidden 16, seed 0, on the MIMIC-shaped fixture (transformer backbone: the fast path);
# finetune losses re-pinned for right padding (dropout's draws fall on other positions than with left padding)
PINNED = {
    "learned": ([4.105547, 4.088514, 4.095019], [0.510282, 1.050514, 1.142536]),
    "medtok_finetuned": ([3.965832, 3.892124, 3.932475], [0.909904, 1.498593, 0.269189]),
    "medtok_frozen": ([3.965832, 3.892176, 3.932619], [0.909904, 1.498593, 0.269189]),
    "medtok_tokens": ([4.013263, 3.998611, 3.928118], [0.684398, 0.776366, 1.282062]),
    "text": ([4.048189, 4.027882, 3.961587], [0.609979, 0.766417, 0.913122]),
}


@pytest.mark.parametrize("variant", sorted(variant_names()))
def test_each_code_embedding_trains_three_steps_with_pinned_losses(prepared, variant, tmp_path):
    pre = losses(train(config(prepared, variant, "pretrain", tmp_path / "pre")))
    fine = losses(train(config(prepared, variant, "finetune", tmp_path / "fine")))
    assert len(pre) == len(fine) == 3 and all(map(torch.isfinite, torch.tensor(pre + fine)))
    assert (pre, fine) == (pytest.approx(PINNED[variant][0], abs=1e-4), pytest.approx(PINNED[variant][1], abs=1e-4))


def test_mamba_backbone_trains_three_steps(prepared, tmp_path):
    pre = losses(train(config(prepared, "learned", "pretrain", tmp_path / "pre", backbone="mamba")))
    assert pre == pytest.approx(PINNED_MAMBA, abs=1e-4)


PINNED_MAMBA = [3.848102, 3.932739, 3.838385]  # mambapy's parallel scan


def test_mpf_puts_the_task_token_first_and_last_and_one_head_reads_it(prepared):
    samples, vocab = load_prepared(prepared[0])
    tasks = samples[samples.kind == "task"]
    for row in tasks.itertuples():
        assert row.input_ids[0] == row.input_ids[-1] == vocab.index[task_token(row.task)]
    model = build_model(vocab, ModelOptions(backbone="transformer", hidden=16, layers=1), 0).eval()
    batch = collate(tasks.head(3).to_dict("records"))
    logits = model.task_logits(batch)
    assert logits.shape == (3,)
    # one head for every task: the task token alone changes the prediction for the same history
    other = dict(batch)
    other["input_ids"] = batch["input_ids"].clone()
    other_task = vocab.index[task_token("los_gt_7d" if tasks.iloc[0].task != "los_gt_7d" else "mortality_30d")]
    other["input_ids"][0, int(batch["attention_mask"][0].sum()) - 1] = other_task  # row 0's last real token
    assert not torch.allclose(model.task_logits(other)[0], logits[0])


@pytest.mark.parametrize("backbone", ["mamba", "transformer"])
def test_a_patients_outputs_do_not_depend_on_the_batchs_padding(prepared, backbone):
    """The same patient gets the same logits alone and in a batch with a longer patient (Mamba has no
    attention mask: pads placed before the real tokens used to run through its state)."""
    samples, vocab = load_prepared(prepared[0])
    tasks = samples[samples.kind == "task"].assign(n=lambda d: d.input_ids.map(len)).sort_values("n")
    short, long = tasks.iloc[0].to_dict(), tasks.iloc[-1].to_dict()
    assert len(long["input_ids"]) >= len(short["input_ids"]) + 5  # the batch really pads the short one
    model = build_model(vocab, ModelOptions(backbone=backbone, hidden=16, layers=2, state_size=4), 0).eval()
    with torch.no_grad():
        alone, batched = model.task_logits(collate([short])), model.task_logits(collate([long, short, long]))
        states_alone = model.hidden_states(collate([short]))[0]
        states_batched = model.hidden_states(collate([long, short]))[1, :len(short["input_ids"])]
    assert batched[1].item() == pytest.approx(alone[0].item(), abs=1e-5)
    assert torch.allclose(states_batched, states_alone, atol=1e-5)  # every real position, not just the last
    assert batched[0].item() == pytest.approx(batched[2].item(), abs=1e-6)


def test_a_code_unseen_by_medtok_gets_its_ancestors_medtok_embedding(prepared):
    _, vocab = load_prepared(prepared[0])
    emb = build_code_embedding("medtok_frozen", vocab, 16, EmbeddingOptions(medtok=str(prepared[1])))
    # N17.9 is not in the tiny artifact: its ancestor N17's MedTok embedding stands in
    assert emb.routes["ancestor"] >= 1 and emb.has_medtok[vocab.index["ICD10CM:N17.9"]]
    from medtok_core.tokenizer import MedTokTokenizer

    tok = MedTokTokenizer.from_pretrained(prepared[1])
    assert torch.equal(emb.medtok[vocab.index["ICD10CM:N17.9"]], tok.embed("ICD10CM:N17")[0])
    # the learned table has no row of its own for a code unseen in training (subject 3 is held out)
    learned = build_code_embedding("learned", vocab, 16, EmbeddingOptions())
    assert learned.rows[vocab.index["ICD9CM:4019"]] == vocab.index["[UNK]"]
    assert learned.rows[vocab.index["ICD10CM:E11.9"]] == vocab.index["ICD10CM:E11.9"]


def test_medtok_variant_without_artifact_is_a_one_line_error(prepared):
    _, vocab = load_prepared(prepared[0])
    with pytest.raises(ConfigError, match="needs a MedTok artifact"):
        build_code_embedding("medtok_tokens", vocab, 16, EmbeddingOptions())


def test_resume_after_kill_gives_the_same_weights(prepared, tmp_path):
    whole = train(config(prepared, "learned", "pretrain", tmp_path / "whole", steps=4, save_every=2))
    killed = config(prepared, "learned", "pretrain", tmp_path / "killed", steps=4, save_every=2)
    train(killed, stop_after=3)  # killed after step 3: the resume state is from step 2
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    train(killed)
    a, b = load_file(whole / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(whole) == losses(tmp_path / "killed")
    train(killed)  # a finished run with the same settings is left as it is
    assert losses(tmp_path / "killed") == losses(whole)
