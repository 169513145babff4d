"""MEDS folders (Medical Event Data Standard, https://github.com/Medical-Event-Data-Standard/meds):
the schema and file layout come from the ``meds`` package; this module reads and writes them.

    root/data/**/*.parquet             one row per event: subject_id, time, code, numeric_value[, text_value]
    root/metadata/codes.parquet        code, description, parent_codes (optional)
    root/metadata/subject_splits.parquet   subject_id, split (train / tuning / held_out)
    root/metadata/dataset.json         dataset_name, etl_name, meds_version ...

Reading is lazy, one shard at a time (a cohort larger than memory streams); MEDS-Extract writes
each subject's events into one shard, sorted by time, which :meth:`MedsDataset.iter_subjects` relies on
only after sorting within the shard. ``MEDS_BIRTH`` / ``MEDS_DEATH`` are the standard's codes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import meds
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from commons.errors import DataFileError
from commons.io import atomic_dir

BIRTH_CODE = meds.birth_code  # "MEDS_BIRTH"
DEATH_CODE = meds.death_code  # "MEDS_DEATH"
SPLITS = (meds.train_split, meds.tuning_split, meds.held_out_split)  # train, tuning, held_out
EVENT_COLUMNS = ("subject_id", "time", "code", "numeric_value")


def _events_table(events: pd.DataFrame) -> pa.Table:
    """The events as a MEDS data table (types cast and checked by the meds package's schema)."""
    frame = pd.DataFrame({
        "subject_id": events["subject_id"].astype("int64"),
        "time": pd.to_datetime(events["time"]).astype("datetime64[us]"),
        "code": events["code"].astype(str),
        "numeric_value": pd.to_numeric(events["numeric_value"], errors="coerce").astype("float32"),
    })
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return meds.DataSchema.align(table)


def write_meds(root: str | Path, events: pd.DataFrame, codes: pd.DataFrame | None = None,
               splits: pd.DataFrame | None = None, dataset_name: str = "", etl_name: str = "medtok-qa ehr",
               subjects_per_shard: int = 1000) -> Path:
    """Write a MEDS folder atomically: events sorted by (subject, time), ``subjects_per_shard`` per shard."""
    root = Path(root)
    events = events.sort_values(["subject_id", "time", "code"], kind="stable", na_position="first")
    subjects = events["subject_id"].drop_duplicates().to_list()
    with atomic_dir(root) as tmp:
        (tmp / "data").mkdir()
        (tmp / "metadata").mkdir()
        for n, start in enumerate(range(0, max(len(subjects), 1), subjects_per_shard)):
            chunk = events[events["subject_id"].isin(subjects[start:start + subjects_per_shard])]
            pq.write_table(_events_table(chunk), tmp / "data" / f"{n}.parquet")
        if codes is not None:
            table = pa.Table.from_pandas(codes.reset_index(drop=True), preserve_index=False)
            pq.write_table(meds.CodeMetadataSchema.align(table), tmp / meds.code_metadata_filepath)
        if splits is not None:
            table = pa.Table.from_pandas(splits[["subject_id", "split"]].reset_index(drop=True), preserve_index=False)
            pq.write_table(meds.SubjectSplitSchema.align(table), tmp / meds.subject_splits_filepath)
        (tmp / meds.dataset_metadata_filepath).write_text(json.dumps(
            {"dataset_name": dataset_name, "etl_name": etl_name, "meds_version": _meds_version()}, indent=2) + "\n")
    return root


def _meds_version() -> str:
    from importlib.metadata import version

    return version("meds")


@dataclass
class MedsDataset:
    """A MEDS folder, read lazily shard by shard."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)
        if not (self.root / meds.data_subdirectory).is_dir():
            raise DataFileError(f"{self.root} is not a MEDS folder (no {meds.data_subdirectory}/ inside); "
                                "pass the folder holding data/ and metadata/ (`medtok-qa ehr data` writes one)")
        if not self.shards:
            raise DataFileError(f"{self.root}/{meds.data_subdirectory} holds no .parquet shards")
        for shard in self.shards:
            self._check_columns(shard)

    @property
    def shards(self) -> list[Path]:
        return sorted((self.root / meds.data_subdirectory).rglob("*.parquet"))

    def _check_columns(self, shard: Path) -> None:
        try:
            names = pq.read_schema(shard).names
        except (pa.ArrowInvalid, OSError) as err:
            raise DataFileError(f"{shard} is not a readable parquet file ({err}); rewrite it") from None
        missing = [c for c in EVENT_COLUMNS if c not in names]
        if missing:
            raise DataFileError(f"{shard} lacks MEDS column(s) {', '.join(missing)} (has {', '.join(names)})")

    def iter_shards(self) -> Iterator[pd.DataFrame]:
        """Each shard's events (subject_id, time, code, numeric_value), sorted by subject then time."""
        for shard in self.shards:
            df = pq.read_table(shard, columns=list(EVENT_COLUMNS)).to_pandas()
            yield df.sort_values(["subject_id", "time"], kind="stable", na_position="first").reset_index(drop=True)

    def iter_subjects(self) -> Iterator[tuple[int, pd.DataFrame]]:
        """(subject_id, that subject's events) for every subject, one shard in memory at a time."""
        for df in self.iter_shards():
            for sid, events in df.groupby("subject_id", sort=True):
                yield int(sid), events.reset_index(drop=True)

    def events(self) -> pd.DataFrame:
        """Every event in memory (small cohorts, tests)."""
        return pd.concat(list(self.iter_shards()), ignore_index=True)

    def codes_metadata(self) -> pd.DataFrame:
        """``metadata/codes.parquet`` (code, description, parent_codes), empty when absent."""
        path = self.root / meds.code_metadata_filepath
        if not path.is_file():
            return pd.DataFrame({"code": [], "description": [], "parent_codes": []})
        return pq.read_table(path).to_pandas()

    def splits(self) -> pd.DataFrame | None:
        """``metadata/subject_splits.parquet`` (subject_id, split), or None when absent."""
        path = self.root / meds.subject_splits_filepath
        if not path.is_file():
            return None
        df = pq.read_table(path, columns=["subject_id", "split"]).to_pandas()
        unknown = sorted(set(df["split"]) - set(SPLITS))
        if unknown:
            raise DataFileError(f"{path} has split names {unknown} outside {', '.join(SPLITS)}; rename them")
        return df

    def metadata(self) -> dict:
        path = self.root / meds.dataset_metadata_filepath
        return json.loads(path.read_text()) if path.is_file() else {}
