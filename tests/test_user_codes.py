"""The own-codes path: a user CSV's codes are trained (or their absence is explained, counted by
reason), ``build`` says what a kg.csv added and shows the user codes in ``--print_config``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtok_core.code_selection import select
from medtok_core.train import DataConfig, select_codes

SNOMED_ROWS = [  # six SNOMED CT codes, the documented user CSV format (system, code, description[, parent])
    ("SNOMEDCT", "73211009", "Diabetes mellitus", ""),
    ("SNOMEDCT", "44054006", "Diabetes mellitus type 2", "73211009"),
    ("SNOMEDCT", "38341003", "Hypertensive disorder", ""),
    ("SNOMEDCT", "195967001", "Asthma", ""),
    ("SNOMEDCT", "13645005", "Chronic obstructive lung disease", ""),
    ("SNOMEDCT", "22298006", "Myocardial infarction", ""),
]


def write_snomed_csv(path: Path) -> Path:
    pd.DataFrame(SNOMED_ROWS, columns=["system", "code", "description", "parent"]).to_csv(path, index=False)
    return path


def table_with_snomed(n_icd: int = 300) -> pd.DataFrame:
    """A vocabulary table: ICD-10-CM categories and subcategories, ATC codes, and the six SNOMED CT codes."""
    rows = [("ICD10CM", f"A{i:02d}" if i % 2 else f"A{i:02d}.1", f"icd {i}", "") for i in range(n_icd)]
    rows += [("ATC", f"A10B{i:02d}", f"atc {i}", "") for i in range(40)]
    rows += [("ICD9CM", f"{i:03d}", f"icd9 {i}", "") for i in range(20)]
    rows += [(s, c, d, p) for s, c, d, p in SNOMED_ROWS]
    t = pd.DataFrame(rows, columns=["system", "code", "description", "parent"])
    t = t.sort_values(["system", "code"], ignore_index=True)
    t.insert(0, "code_id", np.arange(len(t), dtype=np.int32))
    return t


def quick_like(csv: Path | None, **kw) -> DataConfig:
    """The data filters of configs/medtok_quick.yaml, which leave no room for SNOMED CT codes."""
    return DataConfig(systems=["ICD10CM", "ICD9CM", "ATC"] if "systems" not in kw else kw.pop("systems"),
                      undotted_only=True, max_codes=kw.pop("max_codes", 50),
                      user_codes=str(csv) if csv else None, **kw)


def snomed_in(sel: pd.DataFrame) -> set[str]:
    return set(sel.loc[sel["system"] == "SNOMEDCT", "code"])


def test_user_codes_pass_every_filter_and_the_report_says_which_they_passed(tmp_path):
    table = table_with_snomed()
    csv = write_snomed_csv(tmp_path / "my_codes.csv")
    sel, report = select(table, quick_like(csv))
    assert snomed_in(sel) == {c for _, c, _, _ in SNOMED_ROWS}
    assert len(sel) == 50  # the cap counts the user codes
    assert report.trained == report.total == 6 and report.dropped == {}
    assert report.kept_despite["data.systems [ICD10CM, ICD9CM, ATC]"] == 6
    msg = report.message()
    assert msg.splitlines()[0] == f"user codes: 6 of 6 from {csv} trained (SNOMEDCT 6)"
    assert "kept 6 that data.systems [ICD10CM, ICD9CM, ATC] would have dropped" in msg
    assert "--data.exclude_systems" in msg


def test_the_cap_would_have_sampled_user_codes_away_and_the_report_counts_them(tmp_path):
    csv = write_snomed_csv(tmp_path / "my_codes.csv")
    cfg = quick_like(csv, systems=["SNOMEDCT", "ICD10CM"], max_codes=20)
    sel, report = select(table_with_snomed(), cfg)
    assert snomed_in(sel) == {c for _, c, _, _ in SNOMED_ROWS} and len(sel) == 20
    lost = report.kept_despite["the data.max_codes=20 sample"]
    # What the old plain sample (same seed, same filtered rows) kept of the six:
    plain = select(table_with_snomed(), quick_like(None, systems=["SNOMEDCT", "ICD10CM"], max_codes=20))[0]
    assert lost == 6 - len(snomed_in(plain)) > 0


def test_excluded_systems_drop_user_codes_with_a_reason(tmp_path):
    csv = write_snomed_csv(tmp_path / "my_codes.csv")
    sel, report = select(table_with_snomed(), quick_like(csv, exclude_systems=["SNOMEDCT"]))
    assert snomed_in(sel) == set()
    assert report.trained == 0
    dropped = report.dropped["because their system is in data.exclude_systems"]
    assert len(dropped) == 6 and "SNOMEDCT:44054006" in dropped
    assert "dropped 6 because their system is in data.exclude_systems: SNOMEDCT:" in report.message()
    assert "(1 more)" in report.message()


def test_user_codes_missing_from_the_vocabulary_are_reported(tmp_path):
    csv = write_snomed_csv(tmp_path / "my_codes.csv")
    table = table_with_snomed()
    table = table[table["code"] != "22298006"].reset_index(drop=True)
    table["code_id"] = np.arange(len(table), dtype=np.int32)
    _, report = select(table, quick_like(csv))
    assert report.trained == 5
    assert report.dropped["because the vocabulary lacks them (rebuild it with this CSV)"] == ["SNOMEDCT:22298006"]


@pytest.mark.parametrize("max_codes", [0, 30, 10_000])
def test_without_user_codes_the_selection_is_the_plain_filter_chain(max_codes):
    table = table_with_snomed()
    cfg = quick_like(None, max_codes=max_codes)
    plain = table[table["system"].isin(cfg.systems) & ~table["code"].str.contains(".", regex=False)]
    if max_codes and len(plain) > max_codes:
        plain = plain.sample(max_codes, random_state=0).sort_index()
    pd.testing.assert_frame_equal(select_codes(table, cfg), plain)
    assert select(table, cfg)[1] is None


# ----------------------------------------------------------------------------- build
def test_build_print_config_shows_the_user_codes(tmp_path, capsys):
    from recipes.build import main

    csv = write_snomed_csv(tmp_path / "my_codes.csv")
    with pytest.raises(SystemExit) as exit_:
        main(["--print_config", "--user_codes", str(csv), "--kg_csv", "kg.csv"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    import yaml

    printed = yaml.safe_load(out)
    assert printed["vocab"]["user_codes"] == str(csv)
    assert printed["kg"]["kg_csv"] == "kg.csv"


def test_build_says_how_many_kg_csv_edges_it_merged(tmp_path, capsys):
    from test_graph import write_data_dir, write_kg_csv

    from recipes.build import main

    data = write_data_dir(tmp_path / "data")
    csv = write_kg_csv(tmp_path / "kg.csv")
    main(["--data_dir", str(data), "--kg_csv", str(csv), "--vocab.systems", "ATC", "--kg.verify_data", "false",
          "--kg.skip_sources", "hpo", "--progress", "false"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("kg.csv:"))
    # 4 rows: 3 edges between the graph's node types, none of them in the offline fixture files,
    # and 1 anatomy edge outside those types.
    assert line.startswith("kg.csv: 4 rows read, 3 edges merged (3 new, 0 already in the offline sources)"), line
    assert "left out: 1 rows with node types outside the graph, 0 rows whose nodes the graph lacks" in line


# ----------------------------------------------------------------------------- the recipe, end to end
@pytest.mark.integration
def test_train_tokenizer_on_six_snomed_codes_keeps_all_six(tmp_path, capsys):
    """The README's own-codes recipe at tiny sizes, on the real vocabulary and graph."""
    from medtok_core.tokenizer import MedTokTokenizer
    from recipes.train_tokenizer import main

    csv = write_snomed_csv(tmp_path / "my_codes.csv")
    out = tmp_path / "run"
    main(["--config", "configs/medtok_quick.yaml", "--data.user_codes", str(csv), "--data.max_codes", "100",
          "--optim.epochs", "1", "--model.dim", "16", "--model.codebook_size", "256", "--model.top_k", "2",
          "--output_dir", str(out), "--progress", "false"])
    printed = capsys.readouterr().out
    assert f"user codes: 6 of 6 from {csv} trained (SNOMEDCT 6)" in printed
    tok = MedTokTokenizer.from_pretrained(out / "artifact")
    assert len(tok) == 100
    for _, code, _, _ in SNOMED_ROWS:
        assert tok.has_code(f"SNOMEDCT:{code}")
    assert len(tok.tokenize("SNOMEDCT:44054006")) == 4 * 2
