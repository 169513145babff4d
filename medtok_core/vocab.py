"""The code vocabulary: one table of medical codes with stable integer ids.

    vocab = load_or_build_vocab(VocabConfig(user_codes="my_codes.csv"))
    vocab.id_of("ICD10CM", "e119")        # dotted/undotted and any case -> code_id
    vocab.lookup("ICD10CM:E11.9")         # "SYSTEM:CODE" or a bare code when unambiguous
    vocab.ancestors(i)                    # parent, grandparent, ... as code_ids

Built-in systems come from installed packages (see :mod:`medtok_core.code_systems`); anything
else (SNOMEDCT, RXNORM, NDC, CPT, ...) from a user CSV with columns
``system, code, description[, parent]``.

User rows for a code that a built-in system already has *override* it: the user's description
becomes the description (the package's moves to the synonyms, so no text is lost) and a non-empty
user parent replaces the package's parent. User rows for new codes extend the system.

Ids: rows are sorted by (system, code) and numbered 0..n-1, so the same inputs always give the
same ids; adding codes shifts the ids of the codes that sort after them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from commons.config import to_dict
from commons.errors import ConfigError, DataFileError, UserError
from commons.io import atomic_path, cache_dir, sha256_file, write_json
from medtok_core.code_systems import BUILTIN_SYSTEMS, CODE_SYSTEMS, builtin_systems, package_version

__all__ = [
    "BUILTIN_SYSTEMS", "CodeVocab", "VocabConfig", "build_vocab", "load_or_build_vocab",
    "load_user_codes", "normalize_system", "vocab_cache_key",
]

# Bump when the table produced from the same inputs changes (invalidates cached vocabularies).
FORMAT_VERSION = 2  # 2: ICD-10-PCS section / body system / table / body part levels
TABLE_COLUMNS = ["code_id", "system", "code", "description", "parent", "synonyms"]
USER_REQUIRED = ["system", "code", "description"]
_SYSTEM_RE = re.compile(r"^[A-Z][A-Z0-9]*$")


@dataclass
class VocabConfig:
    """Which codes make up the vocabulary."""

    # Built-in systems to load from installed packages (any of ICD10CM, ICD10PCS, ICD9CM, ICD9PCS, ATC).
    systems: list[str] = field(default_factory=lambda: list(builtin_systems()))
    # Optional CSV with columns system, code, description[, parent] (SNOMEDCT, RXNORM, NDC, CPT, ...).
    user_codes: str | None = None
    # Reuse a vocabulary cached under cache_dir()/vocab when the inputs are unchanged.
    use_cache: bool = True


# --------------------------------------------------------------------------------------- normalizing
def normalize_system(system: str) -> str:
    """``icd-10-cm`` / ``ICD10_CM`` / ``icd10cm`` -> ``ICD10CM``."""
    return re.sub(r"[\s_\-.]", "", str(system)).upper()


def _key(codes: pd.Series) -> pd.Series:
    """Lookup key of codes: trimmed, upper case, without dots."""
    return codes.astype(str).str.strip().str.upper().str.replace(".", "", regex=False)


def _canonical_form(system: str, code: str) -> str:
    """The canonical spelling of a code that may not be in the vocabulary."""
    code = str(code).strip().upper()
    return CODE_SYSTEMS[system].canonical(code) if system in CODE_SYSTEMS else code


# --------------------------------------------------------------------------------------- user CSV
def load_user_codes(csv_path: str | Path, base: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read and validate a user code CSV (columns system, code, description[, parent]).

    Parents must name a code of the same system in the CSV, or in ``base`` (the built-in table)
    when given; without ``base``, parents in built-in systems are checked when merging.
    Returns columns system, code, description, parent.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DataFileError(f"user code file {path} does not exist; pass an existing CSV to --user_codes")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise UserError(f"user code file {path} is not a readable UTF-8 CSV ({str(err).splitlines()[0]}); "
                          "save it as CSV with a header row system,code,description[,parent]") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in USER_REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"user code file {path} lacks column(s) {', '.join(missing)}; "
                          f"its header must be system,code,description[,parent] (found: {','.join(df.columns)})")
    if "parent" not in df.columns:
        df["parent"] = ""
    df = df[["system", "code", "description", "parent"]].apply(lambda s: s.str.strip())
    line = pd.Series(np.arange(len(df)) + 2, index=df.index)  # 1-based, after the header

    _fail_rows(path, line, df["system"] == "", "has an empty system; fill in the system (e.g. SNOMEDCT)")
    df["system"] = df["system"].map(normalize_system)
    _fail_rows(path, line, ~df["system"].str.match(_SYSTEM_RE),
               "has a system name that is not letters and digits (e.g. SNOMEDCT, RXNORM)")
    _fail_rows(path, line, df["code"] == "", "has an empty code; fill it in or delete the row")
    _fail_rows(path, line, df["description"] == "", "has an empty description; every code needs one")

    df["code"] = [_canonical_form(s, c) for s, c in zip(df["system"], df["code"], strict=True)]
    df["parent"] = [_canonical_form(s, p) if p else "" for s, p in zip(df["system"], df["parent"], strict=True)]
    key = df["system"] + ":" + _key(df["code"])
    dup = key.duplicated(keep=False)
    if dup.any():
        first = key[dup].iloc[0]
        rows = line[key == first].tolist()
        raise UserError(f"user code file {path} lists code {df.loc[key == first, 'system'].iloc[0]}:"
                          f"{df.loc[key == first, 'code'].iloc[0]} more than once (lines {rows[0]} and "
                          f"{rows[1]}); keep one row per system and code")
    _check_parents(path, line, df, base)
    return df.reset_index(drop=True)


def _fail_rows(path: Path, line: pd.Series, bad: pd.Series, what: str) -> None:
    if bad.any():
        lines = line[bad].tolist()
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise UserError(f"user code file {path}: line {lines[0]}{more} {what}")


def _check_parents(path: Path, line: pd.Series, df: pd.DataFrame, base: pd.DataFrame | None) -> None:
    known = set(df["system"] + ":" + _key(df["code"]))
    if base is not None:
        known |= set(base["system"] + ":" + _key(base["code"]))
    has_parent = df["parent"] != ""
    checkable = has_parent if base is not None else has_parent & ~df["system"].isin(builtin_systems())
    parent_key = df["system"] + ":" + _key(df["parent"])
    bad = checkable & ~parent_key.isin(known)
    if bad.any():
        i = bad.idxmax()
        raise UserError(
            f"user code file {path}: line {line[i]} has parent {df.at[i, 'parent']} which is not a "
            f"{df.at[i, 'system']} code in the file or the built-in vocabulary; add a row for it or leave parent empty")
    selfish = has_parent & (parent_key == df["system"] + ":" + _key(df["code"]))
    _fail_rows(path, line, selfish, "names the code itself as its parent; leave parent empty or fix it")


def _merge_user_codes(base: pd.DataFrame, user: pd.DataFrame) -> pd.DataFrame:
    """Override existing codes with the user's rows and append the new ones (see module doc)."""
    user = user.assign(_key=user["system"] + ":" + _key(user["code"]))
    base = base.assign(_key=base["system"] + ":" + _key(base["code"]))
    by_key = user.set_index("_key")
    hit = base["_key"].isin(by_key.index)
    if hit.any():
        over = by_key.loc[base.loc[hit, "_key"]]
        old_desc = base.loc[hit, "description"].to_numpy()
        new_desc = over["description"].to_numpy()
        old_syn = base.loc[hit, "synonyms"].to_numpy()
        base.loc[hit, "synonyms"] = pd.Series(
            [_unique([o, *s], exclude=n) for o, s, n in zip(old_desc, old_syn, new_desc, strict=True)],
            index=base.index[hit], dtype=object)
        base.loc[hit, "description"] = new_desc
        new_parent = over["parent"].to_numpy()
        base.loc[hit, "parent"] = np.where(new_parent != "", new_parent, base.loc[hit, "parent"].to_numpy())
    new = user[~user["_key"].isin(set(base["_key"]))].copy()
    new["synonyms"] = [[] for _ in range(len(new))]
    merged = pd.concat([base, new[base.columns]], ignore_index=True)
    return merged.drop(columns="_key")


def _unique(items: Iterable[str], exclude: str) -> list[str]:
    seen = {exclude.lower()}
    out = []
    for item in items:
        if item and item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    return out


# --------------------------------------------------------------------------------------- building
def _check_systems(systems: Sequence[str]) -> list[str]:
    wanted = [normalize_system(s) for s in systems]
    unknown = [s for s in wanted if s not in CODE_SYSTEMS]
    if unknown:
        raise ConfigError(f"unknown built-in code system {unknown[0]}; choose from {', '.join(builtin_systems())} "
                          "(other systems come from a user CSV via user_codes)")
    return sorted(set(wanted))


def build_vocab(cfg: VocabConfig) -> CodeVocab:
    """Load the configured systems, merge the user CSV, and number the codes."""
    systems = _check_systems(cfg.systems)
    parts = [CODE_SYSTEMS[s].load() for s in systems]
    base = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLE_COLUMNS[1:])
    if cfg.user_codes:
        base = _merge_user_codes(base, load_user_codes(cfg.user_codes, base=base))
    if base.empty:
        raise ConfigError("the vocabulary is empty; include at least one system or pass user_codes")
    table = base.sort_values(["system", "code"], kind="stable", ignore_index=True)
    table.insert(0, "code_id", np.arange(len(table), dtype=np.int32))
    return CodeVocab(table[TABLE_COLUMNS])


def vocab_cache_key(cfg: VocabConfig) -> str:
    """Hash of everything that determines the table: systems, package versions, user CSV content."""
    systems = _check_systems(cfg.systems)
    dists = sorted({d for s in systems for d in CODE_SYSTEMS[s].packages})
    user_sha = None
    if cfg.user_codes:
        if not Path(cfg.user_codes).is_file():
            raise DataFileError(f"user code file {cfg.user_codes} does not exist; pass an existing CSV to --user_codes")
        user_sha = sha256_file(cfg.user_codes)
    payload = {
        "format": FORMAT_VERSION,
        "systems": systems,
        "packages": {d: package_version(d) for d in dists},
        "user_codes_sha256": user_sha,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_or_build_vocab(cfg: VocabConfig) -> CodeVocab:
    """The vocabulary for ``cfg``, from ``cache_dir()/vocab/<key>/vocab.parquet`` when present."""
    folder = cache_dir() / "vocab" / vocab_cache_key(cfg)
    path = folder / "vocab.parquet"
    if cfg.use_cache and path.is_file():
        return CodeVocab.load(path)
    vocab = build_vocab(cfg)
    vocab.save(path)
    write_json(folder / "config.json", {**to_dict(cfg), "counts": vocab.counts()})
    return vocab


# --------------------------------------------------------------------------------------- the vocabulary
class CodeVocab:
    """One row per code (``table``), with fast lookups by (system, code) and by bare code."""

    def __init__(self, table: pd.DataFrame):
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(f"vocabulary table lacks column(s) {', '.join(missing)}; rebuild it with build_vocab")
        table = table[TABLE_COLUMNS].reset_index(drop=True)
        if not np.array_equal(table["code_id"].to_numpy(), np.arange(len(table))):
            raise UserError("vocabulary code_id must be 0..n-1 in row order; rebuild it with build_vocab")
        table["code_id"] = table["code_id"].astype(np.int32)
        for col in ("system", "code", "description", "parent"):
            table[col] = table[col].astype(str)
        self.table = table
        self._systems = table["system"].to_numpy(dtype=object)
        self._codes = table["code"].to_numpy(dtype=object)
        self._system_set = frozenset(self._systems)
        # Plain object arrays: iterating pandas' arrow-backed strings is several times slower.
        bare = _key(table["code"]).to_numpy(dtype=object)
        keys = table["system"].to_numpy(dtype=object) + ":" + bare
        self._id: dict[str, int] = dict(zip(keys, range(len(table)), strict=True))
        if len(self._id) != len(table):
            dup = pd.Series(keys)[pd.Series(keys).duplicated()].iloc[0]
            raise UserError(f"vocabulary has code {dup} twice (dotted and undotted forms collide); fix the input")
        self._bare_keys = bare
        self._bare: dict[str, list[int]] | None = None  # built on the first bare-code lookup
        parent_keys = table["system"].to_numpy(dtype=object) + ":" + _key(table["parent"]).to_numpy(dtype=object)
        get = self._id.get
        self.parent_id = np.fromiter((get(k, -1) for k in parent_keys), dtype=np.int64, count=len(table))
        self.parent_id[(table["parent"] == "").to_numpy()] = -1

    # ---- size and summary
    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={n}" for s, n in self.counts().items())
        return f"CodeVocab({len(self)} codes: {counts})"

    def counts(self) -> dict[str, int]:
        """Number of codes per system, systems in sorted order."""
        return {str(s): int(n) for s, n in self.table["system"].value_counts().sort_index().items()}

    @property
    def systems(self) -> list[str]:
        return sorted(self._system_set)

    def summary(self) -> str:
        """Codes per system and how many hang under a parent, one line per system."""
        has_parent = pd.Series(self.parent_id >= 0).groupby(self.table["system"].to_numpy()).sum()
        lines = [f"{len(self)} codes"]
        lines += [f"  {s:<10} {n:>7} codes, {int(has_parent[s]):>7} with a parent" for s, n in self.counts().items()]
        return "\n".join(lines)

    # ---- lookups
    def normalize(self, system: str, code: str) -> str:
        """Canonical spelling: the vocabulary's own form when the code is known."""
        system = normalize_system(system)
        i = self.id_of(system, code)
        return str(self._codes[i]) if i is not None else _canonical_form(system, code)

    def id_of(self, system: str, code: str) -> int | None:
        """code_id of ``code`` in ``system`` (any case, with or without dots), or None."""
        system = normalize_system(system)
        key = str(code).strip().upper().replace(".", "")
        i = self._id.get(f"{system}:{key}")
        if i is None and (unpadded := _unpadded_key(system)) is not None:
            i = self._id.get(f"{system}:{unpadded(str(code))}")
        return i

    def ids_of(self, system: str | Sequence[str], codes: Sequence[str]) -> np.ndarray:
        """Batched :meth:`id_of` (same rules): int64 array, -1 where a code is unknown."""
        codes = pd.Series(list(codes), dtype=object)
        if isinstance(system, str):
            systems = np.full(len(codes), normalize_system(system), dtype=object)
        else:
            system = pd.Series(list(system), dtype=object)
            if len(system) != len(codes):
                raise ValueError(f"ids_of: {len(system)} systems for {len(codes)} codes")
            # Few distinct spellings: normalize each once, not once per code.
            systems = system.map({s: normalize_system(s) for s in system.unique()}).to_numpy(dtype=object)
        keys = systems + ":" + _key(codes).to_numpy(dtype=object)
        get = self._id.get
        ids = np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        padded = [s for s in CODE_SYSTEMS if _unpadded_key(s) is not None]
        retry = np.flatnonzero((ids < 0) & np.isin(systems, padded))
        for i in retry:
            ids[i] = get(f"{systems[i]}:{_unpadded_key(systems[i])(str(codes.iat[i]))}", -1)
        return ids

    def candidates(self, code: str) -> list[int]:
        """code_ids of a bare code in every system that has it."""
        if self._bare is None:
            self._bare = {}
            for i, k in enumerate(self._bare_keys):
                self._bare.setdefault(k, []).append(i)
        return list(self._bare.get(str(code).strip().upper().replace(".", ""), []))

    def lookup(self, ref: str) -> int | None:
        """``"SYSTEM:CODE"`` or a bare code; a bare code resolves only when one system has it."""
        ref = str(ref).strip()
        system, sep, code = ref.partition(":")
        if sep and normalize_system(system) in self._system_set:
            return self.id_of(system, code)
        found = self.candidates(ref)
        if len(found) > 1:
            # "E11.9" and "E119" collide only in undotted form: prefer the exact spelling.
            exact = [i for i in found if self._codes[i] == ref.upper()]
            found = exact
        return found[0] if len(found) == 1 else None

    def ref(self, code_id: int) -> str:
        """``"SYSTEM:CODE"`` string of a code_id (the tokenizer's code notation)."""
        return f"{self._systems[code_id]}:{self._codes[code_id]}"

    def row(self, code_id: int) -> dict:
        """The table row of ``code_id`` as a dict."""
        if not 0 <= int(code_id) < len(self):
            raise IndexError(f"code_id {code_id} out of range 0..{len(self) - 1}")
        row = self.table.iloc[int(code_id)].to_dict()
        row["code_id"] = int(row["code_id"])
        row["synonyms"] = list(row["synonyms"])
        return row

    def ancestors(self, code_id: int) -> list[int]:
        """Parent, grandparent, ... up to the root (nearest first)."""
        out = []
        seen = {int(code_id)}
        p = int(self.parent_id[code_id])
        while p >= 0 and p not in seen:
            out.append(p)
            seen.add(p)
            p = int(self.parent_id[p])
        return out

    # ---- persistence
    def save(self, path: str | Path) -> None:
        """Write the table as parquet (atomically)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("code_id", pa.int32()), ("system", pa.string()), ("code", pa.string()),
                            ("description", pa.string()), ("parent", pa.string()),
                            ("synonyms", pa.list_(pa.string()))])
        table = pa.Table.from_pandas(self.table, schema=schema, preserve_index=False)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    @classmethod
    def load(cls, path: str | Path) -> CodeVocab:
        path = Path(path)
        if not path.is_file():
            raise DataFileError(f"vocabulary file {path} does not exist; build it with build_vocab or "
                                "`medtok-qa build`")
        import pyarrow.parquet as pq

        try:
            arrow = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for a truncated/foreign file
            raise DataFileError(f"vocabulary file {path} is not a readable parquet file ({err}); rebuild it") from None
        if "synonyms" not in arrow.column_names:
            raise UserError(f"vocabulary file {path} lacks column synonyms; rebuild it with build_vocab")
        table = arrow.drop_columns(["synonyms"]).to_pandas()
        # to_pylist is C-speed; going through pandas would give numpy arrays per row.
        table["synonyms"] = [s if s is not None else [] for s in arrow.column("synonyms").to_pylist()]
        return cls(table)


def _unpadded_key(system: str):
    """The system's key function for codes typed without leading zeros (ICD-9), or None."""
    return CODE_SYSTEMS[system].unpadded if system in CODE_SYSTEMS else None
