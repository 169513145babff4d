"""eval.evaluate / eval.report / recipes.evaluate on toy datasets and fake checkpoints (no model)."""

import json

import pytest

from commons.errors import UserError
from disease_linking.questions import CodeRef, MCQItem, Mention, load_mcq
from eval import evaluate as ev
from eval.evaluate import EvalConfig, Run, evaluate, select_items, summarize, write_outputs
from recipes.evaluate import main as run_main


def _meddx_record(i: int, std: float, answer: str, n_options: int = 4) -> dict:
    options = "\n".join(f"{letter}: option {letter}{i}" for letter in "ABCDE"[:n_options])
    return {"query": f"Question {i} about disease {i}?\n{options}\n", "answer": answer, "sim_level_std": std}


def _write_meddx(path, n_per_tier=(6, 8, 6), n_options=4):
    """Basic (std .05), Intermediate (.03), Expert (.01); answers cycle through the letters."""
    records, letters = [], "ABCDE"[:n_options]
    for tier_std, n in zip((0.05, 0.03, 0.01), n_per_tier, strict=True):
        for _ in range(n):
            i = len(records)
            records.append(_meddx_record(i, tier_std, letters[(i * 3) % n_options], n_options))
    path.write_text(json.dumps(records))
    return path


class FakeScorer:
    """Correct on questions whose number is even for `medtok`, else predicts 'C'."""

    def __init__(self, method):
        self.method = method

    def score(self, items):
        out = []
        for it in items:
            number = int(it.id.rsplit("-", 1)[1])
            right = self.method == "medtok" and number % 2 == 0 or self.method == "none" and number % 3 == 0
            pred = it.answer if right else "C"
            out.append({"id": it.id, "pred": pred, "probs": {k: float(k == pred) for k in it.options},
                        "n_codes": 0})
        return out


def _checkpoint(root, name, method, seed, train, val):
    from qa.checkpoint import write_checkpoint

    (root / "run_files").mkdir(exist_ok=True)
    run_config, split = root / "run_files" / f"{name}.yaml", root / "run_files" / f"{name}.json"
    run_config.write_text(f"seed: {seed}\n")
    split.write_text(json.dumps({"train": train, "val": val}))
    return write_checkpoint(root / name, {"prefix_mode": method, "base_model": "toy"},
                            extra_files={"train_config.yaml": run_config, "split.json": split})


@pytest.fixture
def fake_models(monkeypatch):
    monkeypatch.setattr(ev, "_load_scorer", lambda src: FakeScorer(src.method))


def test_end_to_end_with_fake_checkpoints(tmp_path, fake_models):
    data = _write_meddx(tmp_path / "MedDDx.json")
    items, _ = load_mcq(data)
    inter = [it.id for it in items if it.tier == "Intermediate"]
    train, val = inter[:5], inter[5:]
    ckpts = [_checkpoint(tmp_path, f"{m}-s{s}", m, s, train, val) for m in ("none", "medtok") for s in (0, 1)]
    out = tmp_path / "eval"
    results = evaluate(EvalConfig(data=str(data), checkpoints=[str(c) for c in ckpts],
                                  zero_shot=["default"], output=str(out),
                                  bootstrap=ev.BootstrapConfig(n_resamples=200)), log=lambda s: None)

    ds = results["dataset"]
    assert (ds["Basic"]["n"], ds["Intermediate"]["n"], ds["Expert"]["n"], ds["All"]["n"]) == (6, 3, 6, 15)
    assert results["held_out_intermediate"] and results["n_excluded_trained_on"] == 5
    assert results["methods"]["medtok"]["n_runs"] == 2 and results["methods"]["zero-shot"]["n_runs"] == 1

    # medtok is right on even-numbered questions; check one tier by hand.
    basic = [it for it in items if it.tier == "Basic"]
    expected = sum(int(it.id.rsplit("-", 1)[1]) % 2 == 0 or it.answer == "C" for it in basic) / len(basic)
    medtok_run = next(r for r in results["runs"] if r["method"] == "medtok")
    assert medtok_run["tiers"]["Basic"]["accuracy"] == pytest.approx(expected)
    assert ds["Basic"]["majority_letter"]["accuracy"] >= 1 / 4

    comps = [c for c in results["comparisons"] if c["method"] == "medtok" and c["tier"] == "All"]
    assert sorted(c["seed"] for c in comps) == [0, 1]
    assert all(c["baseline_seed"] == c["seed"] for c in comps)  # paired by seed
    assert {c["method"] for c in results["comparisons"]} == {"medtok", "zero-shot"}

    for name in ("results.json", "report.md", "accuracy_by_tier.png", "letter_bias.png",
                 "predictions/none.jsonl", "predictions/medtok.jsonl", "predictions/zero-shot.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy_by_tier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "Intermediate held-out (n=3)" in report and "majority-letter baseline" in report
    assert "McNemar" in report
    records = [json.loads(line) for line in (out / "predictions/medtok.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 15 and {r["seed"] for r in records} == {0, 1}
    assert not any(r["id"] in train for r in records)
    saved = json.loads((out / "results.json").read_text())
    assert saved["files"]["report"].endswith("report.md")


def _runs_for(items, methods=("none", "medtok")):
    runs = []
    for m in methods:
        run = Run(m, 0, f"toy/{m}")
        for k, it in enumerate(items):
            pred = it.answer if (k % 2 == 0) == (m == "medtok") else "A"
            run.predictions[it.id] = {"pred": pred, "probs": {}, "n_codes": len(it.mentions)}
        runs.append(run)
    return runs


def test_authors_layout_has_codes_and_no_tiers(tmp_path):
    records = [{"input": [f"Stem {i}?\nA: a{i}\nB: b{i}\nC: c{i}\nD: d{i}", "ABCD"[i % 4]],
                "medical_codes": ["ICD10CM:E11.9"] if i % 3 == 0 else []} for i in range(9)]
    path = tmp_path / "authors.json"
    path.write_text(json.dumps(records))
    items, _ = load_mcq(path)
    results = summarize(items, _runs_for(items))
    assert results["tiers"] == ["All"]
    assert results["dataset"]["All"]["n_linked"] == 3
    run = results["runs"][0]["tiers"]["All"]
    assert run["accuracy_linked"]["n"] == 3 and run["accuracy_unlinked"]["n"] == 6
    files = write_outputs(results, items, _runs_for(items), tmp_path / "out")
    assert "All (n=9)" in (tmp_path / "out" / "report.md").read_text()
    assert set(files["plots"]) == {"accuracy_by_tier", "letter_bias"}


def test_empty_tier_and_five_options(tmp_path):
    data = _write_meddx(tmp_path / "five.json", n_per_tier=(5, 0, 7), n_options=5)
    items, _ = load_mcq(data)
    assert any(it.answer == "E" for it in items)
    results = summarize(items, _runs_for(items))
    assert results["alphabet"] == "ABCDE"
    assert results["dataset"]["Intermediate"]["n"] == 0
    empty = results["runs"][0]["tiers"]["Intermediate"]
    assert empty["accuracy"] is None and empty["n"] == 0
    assert results["dataset"]["Basic"]["chance"] == pytest.approx(0.2)
    assert set(results["dataset"]["Expert"]["answer_distribution"]) == set("ABCDE")
    write_outputs(results, items, _runs_for(items), tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Intermediate (n=0) |" in report and "| A | B | C | D | E |" in report
    assert (tmp_path / "out" / "accuracy_by_tier.png").stat().st_size > 1000


def test_linked_mentions_split_accuracy():
    opts = {"A": "a", "B": "b", "C": "c", "D": "d"}
    linked = Mention("diabetes", 0, 8, "stem", [CodeRef("ICD10CM", "E11.9")])
    items = [MCQItem(f"q-{i}", "diabetes?", opts, "A", "Basic", mentions=[linked] if i < 4 else [])
             for i in range(10)]
    run = Run("medtok", 0, "toy")
    run.predictions = {it.id: {"pred": "A" if it.mentions else "B", "probs": {}, "n_codes": 1} for it in items}
    res = summarize(items, [run])["runs"][0]["tiers"]["Basic"]
    assert res["accuracy_linked"]["accuracy"] == 1.0 and res["accuracy_unlinked"]["accuracy"] == 0.0
    assert res["accuracy"] == pytest.approx(0.4)


def test_select_items_caps_deterministically_and_excludes_training():
    opts = {"A": "a", "B": "b"}
    items = [MCQItem(f"q-{i}", "s", opts, "A", "Expert") for i in range(50)]
    picked = select_items(items, ["Expert"], train_ids={"q-1"}, val_ids=None, max_per_tier=10)
    assert len(picked) == 10 and "q-1" not in {it.id for it in picked}
    assert [it.id for it in picked] == [it.id for it in select_items(items, ["Expert"], {"q-1"}, None, 10)]
    assert [it.id for it in picked] != [f"q-{i}" for i in range(10)]  # not simply the first ten


def test_missing_prediction_is_a_user_error():
    opts = {"A": "a", "B": "b"}
    items = [MCQItem("q-0", "s", opts, "A", "Basic"), MCQItem("q-1", "s", opts, "B", "Basic")]
    run = Run("none", 0, "somewhere")
    run.predictions = {"q-0": {"pred": "A", "probs": {}, "n_codes": 0}}
    with pytest.raises(UserError, match="no prediction for 1 of the 2"):
        summarize(items, [run])


def test_cli_rereports_saved_predictions(tmp_path, capsys):
    data = _write_meddx(tmp_path / "MedDDx.json")
    items, _ = load_mcq(data)
    write_outputs(summarize(items, _runs_for(items)), items, _runs_for(items), tmp_path / "first", plots=False)
    out = tmp_path / "again"
    run_main(["--data", str(data), "--predictions",
              f"{tmp_path / 'first/predictions/none.jsonl'},{tmp_path / 'first/predictions/medtok.jsonl'}",
              "--output", str(out), "--bootstrap.n_resamples", "100", "--plots", "false"])
    printed = capsys.readouterr().out
    assert "| **medtok** |" in printed and "report:" in printed
    assert json.loads((out / "results.json").read_text())["methods"].keys() == {"none", "medtok"}
    assert (out / "eval_config.yaml").is_file()


def test_cli_prints_what_it_scored_what_it_left_out_and_flags_small_samples(tmp_path, capsys, fake_models):
    """A file of mixed tiers: the Intermediate question is in the checkpoint's training split."""
    data = _write_meddx(tmp_path / "MedDDx.json", n_per_tier=(1, 2, 1))
    items, _ = load_mcq(data)
    inter = [it.id for it in items if it.tier == "Intermediate"]
    ckpt = _checkpoint(tmp_path, "none-s0", "none", 0, train=inter[:1], val=inter[1:])
    run_main(["--data", str(data), "--checkpoints", str(ckpt), "--tiers", "Basic,Intermediate",
              "--output", str(tmp_path / "eval"), "--bootstrap.n_resamples", "50", "--plots", "false"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == ("scored 2 of 4 questions; left out 2: 1 because a checkpoint trained on them; "
                          "1 because their tier is not in --tiers Basic,Intermediate")
    table_end = max(i for i, line in enumerate(printed) if line.startswith("|"))
    assert printed[table_end + 1].startswith("warning: small samples (Basic n=1, Intermediate held-out n=1, "
                                             "All n=2): with fewer than 30 questions")
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "- Scored 2 of 4 questions; left out 2: 1 because a checkpoint trained on them" in report
    assert "**Warning: small samples" in report


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(["--data", str(tmp_path / "missing.json"), "--zero_shot", "default",
                  "--output", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err
    with pytest.raises(SystemExit):
        run_main(["--output", str(tmp_path / "o")])
    assert "nothing to evaluate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(["--checkpoints", str(tmp_path), "--output", str(tmp_path / "o")])
    assert "not a QA checkpoint" in capsys.readouterr().err


def test_publish_copies_with_relative_paths_and_regenerates_the_readme_block(tmp_path, monkeypatch):
    from recipes import publish as pub

    items, _ = load_mcq(_write_meddx(tmp_path / "MedDDx.json"))
    results = summarize(items, _runs_for(items))
    results["dataset_path"] = str(pub.REPO_ROOT / "runs" / "x" / "linked.jsonl")
    eval_dir = tmp_path / "pipe" / "eval"
    write_outputs(results, items, _runs_for(items), eval_dir)
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- results:demo -->\nold retyped table\n<!-- /results:demo -->\n\nmore text\n")
    dest = pub.publish(pub.PublishConfig(eval_dir=str(eval_dir), name="demo", command="make demo",
                                         target=str(tmp_path / "docs"), page=str(readme)))
    published = json.loads((dest / "results.json").read_text())
    assert published["dataset_path"] == "runs/x/linked.jsonl"  # relative to the repository
    assert {"report.md", "machine.json", "accuracy_by_tier.png"} <= {p.name for p in dest.iterdir()}
    text = readme.read_text()
    assert "old retyped table" not in text and text.endswith("more text\n") and text.count("<!-- results:demo -->") == 1
    block = text.split("<!-- results:demo -->")[1].split("<!-- /results:demo -->")[0]
    table = ev.report.results_markdown_table(published)
    assert table in block and "`make demo`" in block
    assert "](docs/demo/accuracy_by_tier.png)" in block  # links relative to the page
    assert "\n\n" + table.lstrip("\n") in block  # a blank line before the table: it must not join the findings list
    pub.publish(pub.PublishConfig(eval_dir=str(eval_dir), name="demo", target=str(tmp_path / "docs"),
                                  page=str(readme)))
    assert readme.read_text().count("<!-- results:demo -->") == 1  # replaced, not appended again


def test_publish_ships_every_prediction_and_the_training_log_and_keeps_them_on_republish(tmp_path):
    import gzip

    from recipes import publish as pub

    items, _ = load_mcq(_write_meddx(tmp_path / "MedDDx.json"))
    runs = _runs_for(items)
    results = summarize(items, runs)
    run_dir = tmp_path / "qa" / "none-seed0"
    (run_dir / "best").mkdir(parents=True)
    steps = [{"event": "train", "step": s, "loss": 1.5 - s / 100} for s in (5, 10)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    results["runs"][0]["source"] = str(run_dir / "best")
    eval_dir = tmp_path / "pipe" / "eval"
    write_outputs(results, items, runs, eval_dir)
    page = tmp_path / "page.md"
    dest = pub.publish(pub.PublishConfig(eval_dir=str(eval_dir), name="demo", target=str(tmp_path / "docs"),
                                         page=str(page)))
    predictions = [json.loads(x) for x in gzip.decompress((dest / pub.PREDICTIONS).read_bytes()).splitlines()]
    assert len(predictions) == len(runs) * len(items)
    assert {(r["method"], r["id"]) for r in predictions} == {(run.method, it.id) for run in runs for it in items}
    log = [json.loads(x) for x in gzip.decompress((dest / pub.TRAINING_LOG).read_bytes()).splitlines()]
    assert [(r["method"], r["seed"], r["step"]) for r in log] == [(runs[0].method, runs[0].seed, 5),
                                                                  (runs[0].method, runs[0].seed, 10)]
    assert (dest / pub.TRAINING_CURVES).is_file() and "[per-question predictions](" in page.read_text()
    before = (dest / pub.PREDICTIONS).read_bytes()
    pub.publish(pub.PublishConfig(eval_dir=str(dest), name="demo", target=str(tmp_path / "docs"), page=str(page)))
    assert (dest / pub.PREDICTIONS).read_bytes() == before and "[training log](" in page.read_text()


def _floor_results(cis: list[tuple[float, float]], majority: float = 0.31) -> dict:
    runs = [{"label": f"none-s{i}", "method": "none", "seed": i,
             "tiers": {"All": {"accuracy": (lo + hi) / 2, "ci_low": lo, "ci_high": hi}}} for i, (lo, hi) in enumerate(cis)]
    return {"baseline": "none", "runs": runs,
            "dataset": {"All": {"majority_letter": {"accuracy": majority}, "chance": 0.25}}}


@pytest.mark.parametrize("cis, says", [
    ([(0.35, 0.40), (0.33, 0.38)], "above the floor"),
    ([(0.22, 0.29), (0.21, 0.28)], "significantly **below** the majority letter"),
    ([(0.22, 0.29), (0.28, 0.34)], "includes the majority letter"),
])
def test_floor_finding_says_what_the_intervals_show(cis, says):
    from eval.report import _floor_finding

    assert says in _floor_finding(_floor_results(cis))


def test_republishing_a_published_folder_keeps_its_machine_and_renders_the_report_anew(tmp_path):
    from recipes import publish as pub

    items, _ = load_mcq(_write_meddx(tmp_path / "MedDDx.json"))
    results = summarize(items, _runs_for(items))
    eval_dir = tmp_path / "pipe" / "eval"
    write_outputs(results, items, _runs_for(items), eval_dir)
    page = tmp_path / "page.md"
    dest = pub.publish(pub.PublishConfig(eval_dir=str(eval_dir), name="demo", command="make demo",
                                         target=str(tmp_path / "docs"), page=str(page)))
    machine = json.loads((dest / "machine.json").read_text())
    machine["cpu"] = "the machine that ran it"
    (dest / "machine.json").write_text(json.dumps(machine))
    (dest / "report.md").write_text("an old report\n")
    pub.publish(pub.PublishConfig(eval_dir=str(dest), name="demo", command="ignored", target=str(tmp_path / "docs"),
                                  page=str(page)))
    assert json.loads((dest / "machine.json").read_text())["cpu"] == "the machine that ran it"
    assert (dest / "report.md").read_text() == ev.report.render_report(json.loads((dest / "results.json").read_text()))
    assert "the machine that ran it" in page.read_text()
