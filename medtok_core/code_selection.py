"""Which vocabulary codes MedTok trains on (``data.*`` of the training config), and what became of
the user's own codes.

The codes of ``data.user_codes`` are the user's reason to train: they are trained whatever
``data.systems``, ``data.undotted_only`` and ``data.max_codes`` say (the cap counts them and samples
the other codes into the room left), and only ``data.exclude_systems`` leaves them out. The
:class:`UserCodeReport` says, counted by reason, which user codes the filters would have dropped
and which were left out, so no code disappears without a word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from commons.errors import ConfigError


@dataclass
class UserCodeReport:
    """What happened to the codes of the user CSV in the training selection."""

    path: str
    total: int  # rows of the CSV
    trained: int  # of them in the selection
    per_system: dict[str, int] = field(default_factory=dict)  # trained codes per system
    # reason -> codes (``SYSTEM:CODE``) left out for that reason
    dropped: dict[str, list[str]] = field(default_factory=dict)
    # filter -> user codes it would have dropped but which were kept (user codes pass it)
    kept_despite: dict[str, int] = field(default_factory=dict)

    def message(self, shown: int = 5) -> str:
        """One line per fact, for the console and the run log."""
        systems = ", ".join(f"{s} {n}" for s, n in sorted(self.per_system.items()))
        lines = [f"user codes: {self.trained} of {self.total} from {self.path} trained"
                 + (f" ({systems})" if systems else "")]
        for reason, n in self.kept_despite.items():
            lines.append(f"  kept {n} that {reason} would have dropped (user codes are always trained)")
        if self.kept_despite:
            systems = ",".join(sorted(self.per_system))
            lines.append(f"  (--data.exclude_systems {systems} leaves them out)")
        for reason, refs in self.dropped.items():
            more = f", ... ({len(refs) - shown} more)" if len(refs) > shown else ""
            lines.append(f"  dropped {len(refs)} {reason}: {', '.join(refs[:shown])}{more}")
        return "\n".join(lines)


def _keys(system: pd.Series, code: pd.Series) -> pd.Series:
    """``SYSTEM:CODE`` lookup keys (upper case, no dots), as the vocabulary matches codes."""
    bare = code.astype(str).str.strip().str.upper().str.replace(".", "", regex=False)
    return system.astype(str) + ":" + bare


def user_code_mask(table: pd.DataFrame, user_codes: str | None) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Rows of ``table`` that come from the user CSV, and the CSV itself (None without one)."""
    if not user_codes:
        return np.zeros(len(table), dtype=bool), None
    from medtok_core.vocab import load_user_codes

    user = load_user_codes(user_codes)
    return _keys(table["system"], table["code"]).isin(set(_keys(user["system"], user["code"]))).to_numpy(), user


def _system_filter(table: pd.DataFrame, systems: list[str]) -> np.ndarray:
    known = set(table["system"].unique())
    unknown = sorted(set(systems) - known)
    if unknown:
        raise ConfigError(f"data.systems: {', '.join(unknown)} not in the vocabulary ({', '.join(sorted(known))})")
    keep = np.ones(len(table), dtype=bool)
    if systems:
        keep &= table["system"].isin(systems).to_numpy()
    return keep


def select(table: pd.DataFrame, cfg) -> tuple[pd.DataFrame, UserCodeReport | None]:
    """The training codes of ``table`` under ``cfg`` (a ``DataConfig``) and the user-code report.

    Without user codes this is the plain filter chain (systems, undotted_only, deterministic
    ``max_codes`` sample), unchanged from before user codes were kept.
    """
    exclude = list(getattr(cfg, "exclude_systems", []) or [])
    user, user_df = user_code_mask(table, cfg.user_codes)
    excluded = table["system"].isin(exclude).to_numpy()
    user_kept = user & ~excluded
    in_systems = _system_filter(table, list(cfg.systems))
    dotted = table["code"].astype(str).str.contains(".", regex=False).to_numpy()
    passes = in_systems & ~excluded & (~dotted if cfg.undotted_only else True)
    others = table[passes & ~user]
    room = cfg.max_codes - int(user_kept.sum()) if cfg.max_codes else None
    if room is not None and len(others) > max(room, 0):
        others = others.sample(max(room, 0), random_state=0) if room > 0 else others.iloc[:0]
    if user_df is None:
        sel = others.sort_index()
    else:
        sel = pd.concat([others, table[user_kept]]).sort_index()
    if len(sel) == 0:
        raise ConfigError("the data selection leaves no codes to train on; check data.systems, "
                          "data.exclude_systems and data.undotted_only")
    if user_df is None:
        return sel, None
    return sel, _report(table, cfg, user, user_df, in_systems, dotted, excluded)


def _report(table, cfg, user, user_df, in_systems, dotted, excluded) -> UserCodeReport:
    rows = table[user & ~excluded]
    refs = lambda m: (table["system"][m] + ":" + table["code"][m]).tolist()  # noqa: E731
    dropped = {}
    if (user & excluded).any():
        dropped["because their system is in data.exclude_systems"] = refs(user & excluded)
    missing = ~_keys(user_df["system"], user_df["code"]).isin(set(_keys(table["system"], table["code"])))
    if missing.any():  # the vocabulary was built from another CSV than the one configured
        dropped["because the vocabulary lacks them (rebuild it with this CSV)"] = \
            (user_df["system"][missing] + ":" + user_df["code"][missing]).tolist()
    would = {}
    n_outside = int((user & ~excluded & ~in_systems).sum())
    if n_outside:
        would[f"data.systems [{', '.join(cfg.systems)}]"] = n_outside
    n_dotted = int((user & ~excluded & dotted).sum()) if cfg.undotted_only else 0
    if n_dotted:
        would["data.undotted_only"] = n_dotted
    n_user = len(rows)
    pos = np.flatnonzero(in_systems & ~excluded & (~dotted if cfg.undotted_only else True))
    if cfg.max_codes and len(pos) > cfg.max_codes:
        # The selection before user codes were kept: the cap sampled over all filtered codes
        # (same length, same random_state: the rows DataFrame.sample drew).
        sampled = pd.Series(pos).sample(cfg.max_codes, random_state=0).to_numpy()
        lost = int(user[pos].sum() - user[sampled].sum())
        if lost:
            would[f"the data.max_codes={cfg.max_codes} sample"] = lost
    return UserCodeReport(path=str(cfg.user_codes), total=len(user_df), trained=n_user,
                          per_system=rows["system"].value_counts().to_dict(), dropped=dropped,
                          kept_despite=would)
