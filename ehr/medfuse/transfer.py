"""Cross-cohort transfer of feature embeddings (MedFuse, Section 4.8 on what this machine has): train
MedFuse on a source cohort, copy its learned feature-identity rows into a model for a target cohort
(rows matched by token string: the same lab or code in both vocabularies), train on the target, and
compare with the same model trained from scratch on the target, both on the target's held-out split.
Only the identity table moves; the rest starts fresh in both arms, so the difference is the embeddings'."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commons.errors import ConfigError
from commons.io import check_writable_dir, write_json
from ehr.medfuse.metrics import bootstrap_intervals
from ehr.medfuse.model import MedFuse, MedFuseOptions
from ehr.medfuse.run import (
    HELD_OUT,
    TRAIN,
    CohortOptions,
    FitOptions,
    build_cohort,
    build_model,
    fit,
    predict,
)
from ehr.sequences import PAD, Vocab


def copy_feature_embeddings(source: MedFuse, source_vocab: Vocab, target: MedFuse, target_vocab: Vocab) -> int:
    """Copy the learned identity rows of the tokens both vocabularies hold with a row of their own
    (a token too rare in either cohort's training shares [UNK] there and is left alone); returns how many."""
    src, dst = source.embeddings.identity, target.embeddings.identity
    if not hasattr(src, "table") or not hasattr(dst, "table"):
        raise ConfigError("feature-embedding transfer needs a learned identity table (code_embedding learned, "
                          "text or medtok_*) in both models")
    shared = [t for t in target_vocab.tokens if t in source_vocab.index and not t.startswith("[")
              and int(dst.rows[target_vocab.index[t]]) == target_vocab.index[t]
              and int(src.rows[source_vocab.index[t]]) == source_vocab.index[t]]
    if shared:
        import torch

        with torch.no_grad():
            rows_dst = torch.tensor([target_vocab.index[t] for t in shared])
            rows_src = torch.tensor([source_vocab.index[t] for t in shared])
            dst.table.weight[dst.rows[rows_dst]] = src.table.weight[src.rows[rows_src]]
    return len(shared)


@dataclass
class TransferConfig:
    """Source cohort -> target cohort, one task."""

    source: CohortOptions = field(default_factory=CohortOptions)
    target: CohortOptions = field(default_factory=CohortOptions)
    task: str = "onset_hyperlipidemia_180d"
    model: MedFuseOptions = field(default_factory=MedFuseOptions)
    source_train: FitOptions = field(default_factory=FitOptions)
    target_train: FitOptions = field(default_factory=lambda: FitOptions(steps=100))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    n_resamples: int = 500
    output: str = ""  # also write the result here as JSON (empty: only returned)


def transfer_experiment(cfg: TransferConfig) -> dict:
    """Target held-out metrics from scratch and with transferred feature embeddings (and ``cfg.output``)."""
    if cfg.output:
        check_writable_dir(Path(cfg.output).parent, "--output")
    result = compare_arms(cfg)
    if cfg.output:
        write_json(cfg.output, result)
    return result


def compare_arms(cfg: TransferConfig) -> dict:
    source, target = build_cohort(cfg.source), build_cohort(cfg.target)
    if not target.positives.get(cfg.task, {}).get("estimable"):
        return {"task": cfg.task, "estimable": False, "why_not": target.positives.get(cfg.task, {}).get("why_not", "")}
    src_train, tgt_train = source.records(cfg.task, TRAIN), target.records(cfg.task, TRAIN)
    test = target.records(cfg.task, HELD_OUT)
    if not src_train or not tgt_train:
        raise ConfigError(f"task {cfg.task} needs training samples in both cohorts")
    src_norm, tgt_norm, test_norm = source.normalised(src_train), target.normalised(tgt_train), target.normalised(test)
    probs = {"scratch": [], "transferred": []}
    copied = 0
    for seed in cfg.seeds:
        teacher = build_model("medfuse", source.vocab, cfg.model, seed)
        fit(teacher, src_train, src_norm, source.vocab.index[PAD], cfg.source_train, seed)
        for arm in probs:
            model = build_model("medfuse", target.vocab, cfg.model, seed)
            if arm == "transferred":
                copied = copy_feature_embeddings(teacher, source.vocab, model, target.vocab)
            fit(model, tgt_train, tgt_norm, target.vocab.index[PAD], cfg.target_train, seed)
            probs[arm].append(predict(model, test, test_norm, target.vocab.index[PAD]))
    labels = np.array([r["label"] for r in test])
    subjects = np.array([r["subject_id"] for r in test])
    return {"task": cfg.task, "estimable": True, "shared_tokens": copied,
            "source_train_samples": len(src_train), "target_train_samples": len(tgt_train),
            "target_test_samples": len(test), "target_test_positives": int(labels.sum()),
            "arms": {arm: bootstrap_intervals(labels, p, subjects, cfg.n_resamples) for arm, p in probs.items()}}
