"""Subject splits: MEDS' ``metadata/subject_splits.parquet`` when the folder has one (MEDS-Extract
writes it), else a seeded split by a hash of the subject id (stable across runs and machines,
independent of the order subjects are read in). Every sample of a subject lands in one split."""

from __future__ import annotations

import hashlib

import pandas as pd

from ehr.meds import SPLITS, MedsDataset


def hash_split(subject_ids, seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15)) -> pd.DataFrame:
    """(subject_id, split): train / tuning / held_out by ``fractions`` (train, tuning; held_out the rest)."""
    rows = []
    for sid in sorted({int(s) for s in subject_ids}):
        u = int(hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest()[:12], 16) / float(16 ** 12)
        split = SPLITS[0] if u < fractions[0] else SPLITS[1] if u < fractions[0] + fractions[1] else SPLITS[2]
        rows.append({"subject_id": sid, "split": split})
    return pd.DataFrame(rows, columns=["subject_id", "split"])


def subject_splits(dataset: MedsDataset, seed: int = 0) -> pd.DataFrame:
    """The dataset's own splits, or :func:`hash_split` of its subjects."""
    own = dataset.splits()
    if own is not None:
        return own
    ids = pd.concat([df["subject_id"] for df in dataset.iter_shards()]).unique()
    return hash_split(ids, seed)
