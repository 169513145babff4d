"""Issue 26, the writers' side: one writer per output folder, file sets replaced whole (data before
the files describing it), a run known by its inputs' content, configuration bounds, and the inputs
the validator must reject. Table-driven like tests/test_bad_input.py: every case is exit code 2,
exactly one ``error:`` line naming the problem, no traceback, and nothing under the fixtures'
folder written or changed (a digest of every file, the lock files and folders included)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from commons.config import save_config
from disease_linking.questions import load_mcq, require_answers, write_jsonl
from finetune import train as train_cli
from qa.model import ModelOptions
from qa.tiny import TINY_CODES, build_tiny_lm, build_tiny_medtok, tiny_questions
from qa.training import DataOptions, OptimOptions, TrainConfig, train
from recipes import ask as ask_cli
from recipes import data as datadir
from recipes import evaluate as eval_cli
from recipes import link as link_cli
from recipes import linking_quality, pipeline, publish
from recipes import reference as reference_cli
from recipes import train_tokenizer as medtok_cli

REPO = Path(__file__).resolve().parent.parent
ITEM = {"id": "x-1", "question": "A patient has fever. Which is most likely?", "options": {"A": "flu", "B": "cold"},
        "answer": "A", "tier": "Intermediate"}


def _jsonl(path: Path, lines: list) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return str(path)


def _train_one_step(out: Path, w: dict, data: str) -> None:
    train(TrainConfig(output_dir=str(out), save_every_steps=100, early_stop_patience=0,
                      model=ModelOptions(base_model=w["llama"], medtok=w["medtok"], dtype="float32"),
                      data=DataOptions(train_file=data, val_fraction=0.25, limit_train=8, limit_val=4),
                      optim=OptimOptions(epochs=1, batch_size=4, max_steps=1)))


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, str]:
    """Every file the cases refer to, created once; the cases must leave all of it untouched."""
    root = tmp_path_factory.mktemp("writers")
    w = {"root": str(root), "llama": str(build_tiny_lm(root / "llama")),
         "medtok": str(build_tiny_medtok(root / "medtok", TINY_CODES))}
    write_jsonl(root / "linked.jsonl", tiny_questions(24))
    w["linked"] = str(root / "linked.jsonl")
    bad = {  # question files the validator must reject (each also skippable under skip_invalid)
        "surrogate": ['{"id": "x-1", "question": "Fever \\ud800?", "options": {"A": "flu", "B": "cold"}, '
                      '"answer": "A", "tier": "Intermediate"}'],
        "nested": ["[" * 100_000 + "]" * 100_000],
        "null_answer": [{**ITEM, "answer": None}],
        "no_answer": [{k: v for k, v in ITEM.items() if k != "answer"}],
        "same_options": [{**ITEM, "options": {"A": "flu", "B": "flu", "C": "flu", "D": "flu"}}],
        "same_options_case": [{**ITEM, "options": {"A": "flu", "B": "Flu ", "C": "cold"}}],
    }
    for name, lines in bad.items():
        w[name] = _jsonl(root / f"{name}.jsonl", lines)
    (root / "alias.yaml").write_text("optim:\n  lr: &x 0.001\n  warmup_ratio: *x\n")
    (root / "bomb.yaml").write_text('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
                                    + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                                              for p, c in zip("abcdefgh", "bcdefghi", strict=True)))
    (root / "tag.yaml").write_text('seed: !!python/object/apply:os.system ["echo owned"]\n')
    for name in ("alias", "bomb", "tag"):
        w[name] = str(root / f"{name}.yaml")

    # A finished fine-tune (ask cases), and one whose training file was rewritten in place afterwards.
    _train_one_step(root / "finished", w, w["linked"])
    w["finished"] = str(root / "finished")
    data_a = root / "data_a.jsonl"
    shutil.copyfile(w["linked"], data_a)
    _train_one_step(root / "finished_a", w, str(data_a))
    moved = [json.loads(x) for x in data_a.read_text().splitlines()]
    for rec in moved:  # same ids, answers moved to another letter
        rec["answer"] = "B" if rec["answer"] != "B" else "A"
    _jsonl(data_a, moved)
    w["finished_a_cfg"] = str(root / "finished_a" / "train_config.yaml")

    # An earlier evaluation (max_per_tier 2) and its published copy.
    eval_cli.main(["--data", w["linked"], "--zero_shot", w["llama"], "--output", str(root / "earlier_eval"),
                   "--max_per_tier", "2"])
    w["earlier_eval"] = str(root / "earlier_eval")
    publish.main(["--eval_dir", w["earlier_eval"], "--name", "demo", "--target", str(root / "pub"), "--page", "none"])
    not_results = root / "not_results"  # a results.json that is no evaluation's
    not_results.mkdir()
    (not_results / "results.json").write_text('{"earlier": true}\n')
    (not_results / "report.md").write_text("# report\n")
    w["not_results"] = str(not_results)
    no_report = root / "no_report"
    no_report.mkdir()
    shutil.copyfile(root / "earlier_eval" / "results.json", no_report / "results.json")
    w["no_report"] = str(no_report)

    # An earlier link output (its description, as link writes it) made with other settings.
    save_config(link_cli.LinkCLIConfig(input=w["linked"], output=str(root / "old_linked.jsonl"), skip_invalid=True),
                root / "old_linked.config.yaml")
    shutil.copyfile(w["linked"], root / "old_linked.jsonl")

    # Folders another live writer holds (pid 1 runs on every host).
    owner = json.dumps({"pid": 1, "host": socket.gethostname(), "command": "medtok-qa finetune",
                        "started": "2026-01-01T00:00:00"})
    (root / "locked").mkdir()
    (root / "locked" / ".medtok.lock").write_text(owner)
    (root / ".locked_linked.jsonl.lock").write_text(owner)
    (root / "a_file").write_text("not a folder\n")
    (root / "empty_dir").mkdir()
    return w


TRAIN = train_cli.main
FT = ["--medtok", "{medtok}", "--base_model", "{llama}", "--data.train_file", "{linked}", "--output_dir", "{root}/ft"]
EVAL = ["--zero_shot", "{llama}", "--output", "{root}/ev"]
ASK = ["--checkpoint", "{finished}", "--no-linker", "--question"]
PUB = ["--target", "{root}/pub", "--page", "none"]
SEEDS = "must be a seed in 0..4294967295 (2^32-1)"

# (name, command, argv, environment, expected substring of the one error: line)
CASES = [
    # configuration: YAML without aliases or foreign tags, seeds in range, accumulation that fits an epoch
    ("yaml-alias", TRAIN, ["--config", "{alias}"] + FT, {}, "anchors and aliases (&name, *name) are not accepted"),
    ("yaml-alias-bomb", TRAIN, ["--config", "{bomb}"] + FT, {}, "anchors and aliases"),
    ("yaml-python-tag", TRAIN, ["--config", "{tag}"] + FT, {}, "is not valid YAML"),
    ("ft-seed-negative", TRAIN, FT + ["--seed", "-1"], {}, "seed " + SEEDS + ", got -1"),
    ("ft-seed-2^70", TRAIN, FT + ["--seed", str(2**70)], {}, "seed " + SEEDS),
    ("ft-split-seed-negative", TRAIN, FT + ["--data.split_seed", "-5"], {}, "data.split_seed " + SEEDS),
    ("ft-grad-accum-huge", TRAIN, FT + ["--optim.grad_accum", "1000000"], {},
     "optim.grad_accum 1000000 exceeds the"),
    ("medtok-seed-2^32", medtok_cli.main, ["--seed", str(2**32), "--output_dir", "{root}/mt"], {}, "seed " + SEEDS),
    ("eval-bootstrap-seed", eval_cli.main, ["--data", "{linked}"] + EVAL + ["--bootstrap.seed", "-1"], {},
     "bootstrap.seed " + SEEDS),
    ("reference-seeds", reference_cli.main, ["--medtok", "{medtok}", "--seeds", "0,-3", "--output", "{root}/ref"], {},
     "seeds " + SEEDS + ", got -3"),
    ("pipeline-seeds-negative", pipeline.main, ["--output", "{root}/p", "--seeds", "-1"], {}, "seeds " + SEEDS),
    ("pipeline-seeds-dry-run", pipeline.main, ["--output", "{root}/p", "--seeds", "-1", "--dry_run", "true"], {},
     "seeds " + SEEDS),
    # a run is its inputs' content: a training file rewritten in place is another run
    ("ft-data-rewritten", TRAIN, ["--config", "{finished_a_cfg}"], {},
     "data.train_file: the content of {root}/data_a.jsonl changed since that run"),
    # one writer per output folder
    ("ft-locked", TRAIN, FT + ["--output_dir", "{root}/locked"], {}, "is being written by pid 1 on"),
    ("eval-locked", eval_cli.main, ["--data", "{linked}", "--zero_shot", "{llama}", "--output", "{root}/locked"], {},
     "(medtok-qa finetune, since 2026-01-01T00:00:00)"),
    ("link-locked", link_cli.main, ["--input", "{linked}", "--output", "{root}/locked_linked.jsonl"], {},
     "is being written by pid 1"),
    ("publish-locked", publish.main, ["--eval_dir", "{earlier_eval}", "--name", "locked", "--page", "none",
                                      "--target", "{root}"], {}, "is being written by pid 1"),
    # results written with other settings are not replaced without --force true
    ("eval-other-settings", eval_cli.main, ["--data", "{linked}", "--zero_shot", "{llama}", "--output",
                                            "{earlier_eval}", "--max_per_tier", "3"], {},
     "holds a run with other settings (max_per_tier: 2 -> 3); use another --output, or --force true"),
    ("link-other-settings", link_cli.main, ["--input", "{linked}", "--output", "{root}/old_linked.jsonl"], {},
     "holds a run with other settings (skip_invalid: True -> False)"),
    # one command's outputs never overlap
    ("link-authors-is-output", link_cli.main, ["--input", "{linked}", "--output", "{root}/l.jsonl",
                                               "--authors_output", "{root}/l.jsonl"], {}, "would write the same file"),
    ("link-authors-is-summary", link_cli.main, ["--input", "{linked}", "--output", "{root}/l.jsonl",
                                                "--authors_output", "{root}/l.summary.json"], {},
     "would write the same file"),
    # publish: names confined, the evaluation checked before anything is written
    ("publish-name-escapes", publish.main, ["--eval_dir", "{earlier_eval}", "--name", "../../escaped"] + PUB, {},
     "--name '../../escaped' must be one folder name"),
    ("publish-name-slash", publish.main, ["--eval_dir", "{earlier_eval}", "--name", "a/b"] + PUB, {},
     "must be one folder name"),
    ("publish-name-absolute", publish.main, ["--eval_dir", "{earlier_eval}", "--name", "/tmp/x"] + PUB, {},
     "must be one folder name"),
    ("publish-not-results", publish.main, ["--eval_dir", "{not_results}", "--name", "demo"] + PUB, {},
     "is not an evaluation's results"),
    ("publish-no-report", publish.main, ["--eval_dir", "{no_report}", "--name", "demo"] + PUB, {},
     "holds no report.md"),
    # the validator: what cannot be encoded, parsed safely or scored
    ("ft-lone-surrogate", TRAIN, FT + ["--data.train_file", "{surrogate}"], {}, "cannot be encoded"),
    ("ft-nested-100k", TRAIN, FT + ["--data.train_file", "{nested}"], {}, "nested deeper than 16 levels"),
    ("eval-no-answer", eval_cli.main, ["--data", "{no_answer}"] + EVAL, {}, "answer is missing"),
    ("ft-same-options", TRAIN, FT + ["--data.train_file", "{same_options}"], {},
     "options A and B have the same text ('flu'"),
    ("eval-same-options-case", eval_cli.main, ["--data", "{same_options_case}"] + EVAL, {},
     "options A and B have the same text ('Flu', ignoring case and spaces)"),
    ("eval-lone-surrogate", eval_cli.main, ["--data", "{surrogate}"] + EVAL, {}, "cannot be encoded"),
    ("eval-null-answer", eval_cli.main, ["--data", "{null_answer}"] + EVAL, {}, "answer is missing"),
    ("link-nested-100k", link_cli.main, ["--input", "{nested}", "--output", "{root}/l.jsonl"], {},
     "nested deeper than 16"),
    ("ask-duplicate-letters", ask_cli.main, ASK + ["Fever?\nA: flu\nA: cold\nB: mumps"], {},
     "option letter A appears twice"),
    ("ask-lone-surrogate", ask_cli.main, ASK + ["Fever\ud800?\nA: flu\nB: cold"], {}, "cannot be encoded"),
    ("ask-nested-json", ask_cli.main, ASK + ['{{"question": ' + "[" * 100_000], {}, "nested deeper than 16"),
    ("ask-same-options", ask_cli.main, ASK + ["Fever?\nA: flu\nB: Flu \nC: cold"], {}, "have the same text"),
    # environment
    ("data-dir-missing", datadir.main, [], {"MEDTOK_DATA_DIR": "{root}/no_such_dir"}, "does not exist"),
    ("data-dir-is-file", datadir.main, [], {"MEDTOK_DATA_DIR": "{a_file}"}, "is a file, not a folder"),
    ("quality-gold-missing", linking_quality.main, ["--gold_v1", "{root}/nope.jsonl"], {},
     "gold file {root}/nope.jsonl does not exist"),
]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _code(stop_or_value) -> int:
    return stop_or_value.code if isinstance(stop_or_value, SystemExit) else stop_or_value


@pytest.mark.parametrize("name, main, argv, env, message", CASES, ids=[c[0] for c in CASES])
def test_writer_and_validator_cases(w, capsys, monkeypatch, name, main, argv, env, message):
    w = {**w, "a_file": str(Path(w["root"]) / "a_file")}
    root = Path(w["root"])
    before = tree_digest(root)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(**w))
    capsys.readouterr()
    try:
        outcome = main([a.format(**w) for a in argv])
    except SystemExit as stop:
        outcome = stop
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert _code(outcome) == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert message.format(**w) in errors[0], errors[0]
    assert tree_digest(root) == before  # nothing written, nothing changed, no lock or folder left


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


# ---- the validator under skip_invalid -----------------------------------------------------------------------
def test_skip_invalid_skips_every_kind_with_its_reason(w, tmp_path):
    lines = [json.dumps(q.to_json()) for q in tiny_questions(2)]
    for name in ("surrogate", "nested", "same_options", "same_options_case"):
        lines += Path(w[name]).read_text().splitlines()
    lines.append('{"id": "broken", "question": ')  # not JSON at all
    path = Path(_jsonl(tmp_path / "mixed.jsonl", lines))
    items, skipped = load_mcq(path, skip_invalid=True)
    assert len(items) == 2 and len(skipped) == 5
    reasons = " | ".join(skipped)
    for why in ("cannot be encoded", "nested deeper", "have the same text", "not valid JSON"):
        assert why in reasons, reasons
    # What is scored needs its answer (linking, ask and training take questions without one).
    unanswered, _ = load_mcq(Path(w["null_answer"]))
    assert require_answers(items + unanswered, "f", skip_invalid=True) == items


# ---- ask: a malformed question never ends the loop; nothing answered is a failure --------------------------
def _ask_piped(w, text: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipes.ask", "--checkpoint", w["finished"], "--no-linker"], input=text,
                          capture_output=True, text=True, cwd=REPO, env=os.environ, timeout=300)


def test_ask_piped_all_malformed_exits_2_and_a_good_one_exits_0(w):
    bad = ("Fever?\nA: flu\nA: cold\nB: mumps\n\n"  # a JSON escape is how a lone surrogate gets through a pipe
           + '{"question": "Fever \\ud800?", "options": {"A": "a", "B": "b"}}\n' + '{"question": "x", ' + "[" * 5000 + "\n")
    result = _ask_piped(w, bad)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error:") == 3 and "Traceback" not in result.stderr
    good = bad + "\nWhich is it?\nA: heart failure\nB: pneumonia\n"
    result = _ask_piped(w, good)
    assert result.returncode == 0 and "answer:" in result.stdout and result.stderr.count("error:") == 3


def test_ask_says_what_an_over_long_prompt_lost(w):
    from qa.ask import Asker, parse_question
    from qa.model import load_qa_checkpoint

    asker = Asker(load_qa_checkpoint(w["finished"]))
    result = asker.answer(parse_question("Which disease?\nA: " + "fever " * 2000 + "\nB: cold"))
    assert result["truncated"] and "the stem" in result["truncated"] and "option A" in result["truncated"]
    assert "option B" not in result["truncated"]
    from qa.ask import format_answer

    assert format_answer(result).startswith("note: the question is longer than the model's prompt; cut: the stem")
    assert asker.answer(parse_question("Which disease?\nA: flu\nB: cold"))["truncated"] is None


# ---- runs: identity by content, --force, the lock -----------------------------------------------------------
def test_a_moved_run_folder_resumes(w, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(w["finished"], moved)
    weights = tree_digest(moved / "best")["adapter_model.safetensors"]
    TRAIN(["--config", str(moved / "train_config.yaml"), "--output_dir", str(moved)])  # no "other settings"
    assert "best QA checkpoint" in capsys.readouterr().out
    assert tree_digest(moved / "best")["adapter_model.safetensors"] == weights  # finished: not trained again
    assert f"output_dir: {moved}" in (moved / "train_config.yaml").read_text()


def test_eval_same_settings_reruns_and_force_replaces(w, tmp_path, capsys):
    out = tmp_path / "ev"
    shutil.copytree(w["earlier_eval"], out)
    argv = ["--data", w["linked"], "--zero_shot", w["llama"], "--output", str(out), "--max_per_tier", "2"]
    eval_cli.main(argv + ["--workers", "1"])  # how it runs is not what it is
    eval_cli.main(argv[:-1] + ["3", "--force", "true"])
    assert json.loads((out / "results.json").read_text())["dataset"]["Intermediate"]["n"] == 3
    assert "max_per_tier: 3" in (out / "eval_config.yaml").read_text()
    assert not list(out.glob(".*.txn*")) and not (out / ".medtok.lock").exists()


def test_a_stale_lock_is_taken_over_with_a_note(w, tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "ev"
    out.mkdir()
    (out / ".medtok.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    eval_cli.main(["--data", w["linked"], "--zero_shot", w["llama"], "--output", str(out), "--max_per_tier", "1"])
    err = capsys.readouterr().err
    assert f"note: taking over the lock {out / '.medtok.lock'} of pid {int(dead.stdout)}" in err
    assert (out / "results.json").is_file() and not (out / ".medtok.lock").exists()


def test_a_full_disk_is_one_error_line_and_the_previous_evaluation_stays(w, tmp_path, capsys, monkeypatch):
    from commons import fileset

    out = tmp_path / "ev"
    shutil.copytree(w["earlier_eval"], out)
    before = tree_digest(out)

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileset, "write_text", full)  # the journal, written after every temporary
    with pytest.raises(SystemExit) as stop:
        eval_cli.main(["--data", w["linked"], "--zero_shot", w["llama"], "--output", str(out), "--max_per_tier", "3",
                       "--force", "true"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert [x for x in err.splitlines() if x.startswith("error:")] == [
        f"error: cannot write {out / '.eval.txn.json'}: No space left on device; free some space or write elsewhere"]
    after = tree_digest(out)
    assert {k: v for k, v in after.items() if not k.startswith("scored")} == \
        {k: v for k, v in before.items() if not k.startswith("scored")}


def test_data_download_without_network_is_one_error_line(tmp_path, capsys, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datadir.urllib.request, "urlretrieve", offline)
    monkeypatch.setattr(datadir.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(
        subprocess.CalledProcessError(1, a[0], stderr=b"ERROR: network unreachable")))
    with pytest.raises(SystemExit) as stop:
        datadir.main(["--data-dir", str(tmp_path), "--download"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("error:") == 1 and "downloading the missing data files failed" in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_the_tokenizer_treats_empty_input_alike(w):
    from medtok_core.tokenizer import MedTokTokenizer

    tok = MedTokTokenizer.from_pretrained(w["medtok"])
    one = [f"{s}:{c}" for s, c, _ in TINY_CODES[:1]]
    assert tok.encode([]).shape == (0, tok.encode(one).shape[1])
    assert tok.token_weights([]).shape == (0, tok.token_weights(one).shape[1])
    assert tok.embed([]).shape == (0, tok.embed(one).shape[1])
    assert tok.tokenize([]) == []


# ---- two writers, and kills during the final write ----------------------------------------------------------
def test_two_writers_into_one_folder_the_second_is_refused(w, tmp_path, capsys):
    out = tmp_path / "ev"
    first = subprocess.Popen([sys.executable, "-m", "recipes.evaluate", "--data", w["linked"], "--zero_shot", w["llama"],
                              "--output", str(out), "--permutations", "4", "--max_per_tier", "4"], cwd=REPO,
                             env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".medtok.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert (out / ".medtok.lock").exists(), first.communicate()
    with pytest.raises(SystemExit) as stop:
        eval_cli.main(["--data", w["linked"], "--zero_shot", w["llama"], "--output", str(out), "--max_per_tier", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"is being written by pid {first.pid}" in err
    assert first.wait(timeout=300) == 0, first.communicate()
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["Intermediate"]["n"] == 4 and "max_per_tier: 4" in (out / "eval_config.yaml").read_text()


KILLER = """
import os, signal, sys
at = int(os.environ["KILL_AT"]); seen = [0]; real = os.replace
def replace(src, dst):  # SIGKILL right before the KILL_AT-th new file of the set is renamed in
    if str(src).endswith(".txn.tmp"):
        seen[0] += 1
        if seen[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
"""

LINK_KILLER = KILLER + """
from disease_linking import linker
from recipes import link
class NoMentions:  # the write path is under test, not the linker (which would build its lexicon)
    lexicon = ()
    def link_items(self, items, progress=False):
        return items
linker.Linker.from_cache = classmethod(lambda cls, *a, **k: NoMentions())
link.main(sys.argv[1:])
"""

EVAL_KILLER = KILLER + """
from recipes import evaluate
evaluate.main(sys.argv[1:])
"""


def _run(script: str, argv: list[str], at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *argv], cwd=REPO, env={**os.environ, "KILL_AT": str(at)},
                          capture_output=True, text=True, timeout=300)


def _killed(script: str, argv: list[str], at: int) -> None:
    result = _run(script, argv, at)
    assert result.returncode == -signal.SIGKILL, result.stderr


def _digests(paths: list[Path]) -> dict[str, str | None]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None for p in paths}


@pytest.mark.parametrize("at", [1, 2, 4])
def test_link_killed_in_its_final_write_leaves_the_old_run_whole(w, tmp_path, at, capsys):
    from commons.fileset import recover

    out = tmp_path / "linked.jsonl"
    files = [out, tmp_path / "linked.summary.json", tmp_path / "linked.config.inputs.json",
             tmp_path / "linked.config.yaml"]
    _run(LINK_KILLER, ["--input", w["linked"], "--output", str(out), "--progress", "false"], at=99)  # the old run
    old = _digests(files)
    assert None not in old.values()
    _killed(LINK_KILLER, ["--input", w["linked"], "--output", str(out), "--progress", "false", "--skip_invalid",
                          "true", "--force", "true"], at=at)
    if at > 1:
        assert _digests(files) != old  # on disk mid-commit: mixed until the next writer recovers
    assert recover(tmp_path / ".linked.jsonl.txn.json")  # what the next link (or any writer) does first
    assert _digests(files) == old
    assert "skip_invalid: false" in (tmp_path / "linked.config.yaml").read_text()
    assert not list(tmp_path.glob(".*.txn*"))


@pytest.mark.parametrize("at", [2, 7])
def test_eval_killed_in_its_final_write_leaves_the_old_run_whole_then_the_rerun_writes_the_new(w, tmp_path, at,
                                                                                                 capsys):
    out = tmp_path / "ev"
    shutil.copytree(w["earlier_eval"], out)
    files = [out / "predictions" / "zero-shot.jsonl", out / "accuracy_by_tier.png", out / "letter_bias.png",
             out / "report.md", out / "eval_config.inputs.json", out / "eval_config.yaml", out / "results.json"]
    old = _digests(files)
    argv = ["--data", w["linked"], "--zero_shot", w["llama"], "--output", str(out), "--max_per_tier", "3",
            "--force", "true"]
    _killed(EVAL_KILLER, argv, at=at)
    assert (out / ".eval.txn.json").is_file()
    with pytest.raises(SystemExit):  # the next eval restores the old run first, and finds it is another run
        eval_cli.main(argv[:-2])
    err = capsys.readouterr().err
    assert "previous files were restored" in err and "other settings (max_per_tier: 2 -> 3)" in err
    assert _digests(files) == old and not (out / ".eval.txn.json").exists()
    eval_cli.main(argv)  # and the new run, written whole
    assert "max_per_tier: 3" in (out / "eval_config.yaml").read_text()
    assert json.loads((out / "results.json").read_text())["dataset"]["Intermediate"]["n"] == 3
