"""Read-back integrity (issue 26), table-driven: every folder the project loads again (MedTok
artifact, QA checkpoint with its LoRA adapter and prefix module, reference folder, token cache) is
verified by its owner before it is used, and no model folder gets to run its own code.

Each folder case: a fixture copied into ``tmp_path``, damaged one way, then loaded through the API
or a command; expected: one error naming the problem (commands: exactly one ``error:`` line, exit 2,
no traceback), and nothing changed or written anywhere (the damaged copy and the fixtures hash the
same before and after; no file outside the folder is ever opened for hashing).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from commons import integrity
from commons.errors import UserError
from commons.integrity import UnverifiedFolderWarning, write_manifest
from disease_linking.questions import write_jsonl
from finetune import train as train_cli
from medtok_core.tokenizer import MedTokTokenizer
from qa import token_cache
from qa.base_model import load_base_model
from qa.model import ModelOptions, QAModel, build_qa_model
from qa.prefix import CodeSource
from qa.reference import CodeVectors, ReferenceOptions, load_reference, save_reference, train_reference
from qa.tiny import TINY_CODES, build_tiny_lm, build_tiny_medtok, tiny_questions
from recipes import ask as ask_cli
from recipes import evaluate as eval_cli

ARTIFACT_FILES = ("config.json", "model.safetensors", "vocab.parquet", "token_table.safetensors")
CKPT_FILES = ("qa_config.json", "adapter_config.json", "adapter_model.safetensors", "projector.safetensors")
REF_FILES = ("reference.json", "reference.safetensors", "split.json")
ADAPTER = "adapter_model.safetensors"
_FX: dict[str, Path] = {}  # the intact fixtures, for damage functions that borrow from another one


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    """Intact fixtures, built once: tiny LLaMA and GPT-2, a MedTok artifact, a QA checkpoint of each
    (LoRA weights made non-zero, so a lost adapter shows), a reference folder, questions."""
    root = tmp_path_factory.mktemp("integrity")
    fx = {"root": root, "llama": build_tiny_lm(root / "llama"), "gpt2": build_tiny_lm(root / "gpt2", "gpt2"),
          "medtok": build_tiny_medtok(root / "medtok", TINY_CODES)}
    for name, base, mode in (("ckpt", "llama", "medtok"), ("ckpt_gpt2", "gpt2", "none")):
        model = build_qa_model(ModelOptions(base_model=str(fx[base]), medtok=str(fx["medtok"]), prefix_mode=mode,
                                            dtype="float32"), seed=1)
        torch.manual_seed(2)
        with torch.no_grad():
            for n, p in model.lm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        (root / "split.json").write_text(json.dumps({"train": [], "val": None}))
        model.save_checkpoint(root / name, {"split.json": root / "split.json"})
        fx[name] = root / name
    codes = CodeSource(MedTokTokenizer.from_pretrained(fx["medtok"]))
    opts = ReferenceOptions(epochs=1, hidden=8)
    ref, summary = train_reference("ref-medtok", CodeVectors(codes, "medtok"), tiny_questions(20), [], opts, 0)
    fx["reference"] = save_reference(root / "reference", ref, opts, 0, summary, {"train": [], "val": []})
    write_jsonl(root / "linked.jsonl", tiny_questions(8))
    fx["linked"] = root / "linked.jsonl"
    _FX.update(fx)
    return fx


# ------------------------------------------------------------------------------------ damage helpers
def remanifest(folder: Path, names) -> None:
    """A manifest that matches the damaged files: the damage must be caught by the other checks."""
    write_manifest(folder, [n for n in names if (folder / n).exists()])


def edit_tensors(folder: Path, file: str, edit, names) -> None:
    tensors = load_file(str(folder / file))
    edit(tensors)
    save_file(tensors, str(folder / file))
    if names:  # () leaves the manifest as it was (the damage must then be caught by it)
        remanifest(folder, names)


def edit_json(folder: Path, file: str, edit, names=None) -> None:
    data = json.loads((folder / file).read_text())
    data = edit(data) or data
    (folder / file).write_text(json.dumps(data))
    if names:
        remanifest(folder, names)


def set_manifest(obj):
    return lambda d, o: (d / "manifest.json").write_text(json.dumps(obj))


def set_entry(name):
    """A manifest holding the real digests plus one entry named ``name`` (``{out}``: outside file)."""
    def damage(d: Path, outside: Path):
        data = json.loads((d / "manifest.json").read_text())
        data["sha256"][name.format(out=outside, rel=os.path.relpath(outside, d))] = "0" * 64
        (d / "manifest.json").write_text(json.dumps(data))
    return damage


def lora_keys(folder: Path, part: str) -> list[str]:
    return sorted(k for k in load_file(str(folder / ADAPTER)) if part in k)


def nan_lora_b(d, o):
    edit_tensors(d, ADAPTER, lambda t: t[lora_keys(d, "lora_B")[0]].fill_(float("nan")), CKPT_FILES)


def gpt2_adapter(d, o, same_base_name=False):
    for f in ("adapter_config.json", ADAPTER):
        shutil.copyfile(_FX["ckpt_gpt2"] / f, d / f)
    if same_base_name:
        edit_json(d, "adapter_config.json",
                  lambda c: c.update(base_model_name_or_path=json.loads((d / "qa_config.json").read_text())["base_model"]))
    remanifest(d, CKPT_FILES)


def rank_four(d, o):
    def cut(t):
        for k in list(t):
            t[k] = t[k][:4].contiguous() if "lora_A" in k else t[k][:, :4].contiguous()
    edit_tensors(d, ADAPTER, cut, CKPT_FILES)


def pickled_adapter(d, o):
    class Payload:  # would create the marker file if anything unpickled it
        def __reduce__(self):
            return (os.system, (f"touch {o / 'PWNED'}",))
    (d / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    (d / ADAPTER).unlink()
    remanifest(d, CKPT_FILES)


def symlink_table_out(d, o):
    """token_table.safetensors replaced by a symlink to an identical copy outside the folder."""
    shutil.copyfile(d / "token_table.safetensors", o / "table.safetensors")
    (d / "token_table.safetensors").unlink()
    (d / "token_table.safetensors").symlink_to(o / "table.safetensors")


def auto_map(file):
    def damage(d, o):
        edit_json(d, file, lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel",
                                                        "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}))
        (d / "modeling_evil.py").write_text(f"open({str(o / 'PWNED')!r}, 'w').write('ran')\n")
    return damage


def flip_byte(file):
    def damage(d, o):
        data = bytearray((d / file).read_bytes())
        data[-3] ^= 0xFF
        (d / file).write_bytes(bytes(data))
    return damage


# --------------------------------------------------------------------------------------- the calls
def tokenizer_call(d, fx):
    MedTokTokenizer.from_pretrained(d)


def model_state_call(d, fx):
    MedTokTokenizer.from_pretrained(d)._load_model_state()


def checkpoint_call(d, fx):
    QAModel.from_pretrained(d)


def reference_call(d, fx):
    load_reference(d)


def base_model_call(d, fx):
    load_base_model(str(d), "float32")


def text_encoder_call(d, fx):
    from medtok_core.text_encoder import TextEncoder

    assert TextEncoder(d, use_cache=False).dim  # asking the width reads config.json through transformers


def cli(main, argv):
    def call(d, fx):
        main([a.format(d=d, **fx) for a in argv])
    call.cli = True
    return call


EVAL = cli(eval_cli.main, ["--data", "{linked}", "--checkpoints", "{d}", "--output", "{d}/../eval_out"])
ASK = cli(ask_cli.main, ["--checkpoint", "{d}", "--no-linker", "--question", "Q?\nA: fever\nB: cough"])
FINETUNE = cli(train_cli.main, ["--medtok", "{d}", "--base_model", "{llama}", "--data.train_file", "{linked}",
                                "--output_dir", "{d}/../ft_out"])
ZERO_SHOT = cli(eval_cli.main, ["--data", "{linked}", "--zero_shot", "{d}", "--output", "{d}/../eval_out"])

# (case, fixture copied, damage(folder, outside_dir), call, expected error substring)
CASES = [
    # MedTok artifact: the manifest is required, complete, confined, and checked before anything is read
    ("art-no-manifest", "medtok", lambda d, o: (d / "manifest.json").unlink(), tokenizer_call,
     "has no manifest.json, so its files cannot be verified"),
    ("art-no-manifest-zeroed", "medtok", lambda d, o: (
        (d / "manifest.json").unlink(),
        edit_tensors(d, "token_table.safetensors", lambda t: t["embeddings"].zero_(), ())), tokenizer_call,
     "has no manifest.json"),
    ("art-empty-manifest-1e30", "medtok", lambda d, o: (
        edit_tensors(d, "token_table.safetensors", lambda t: t["embeddings"].fill_(1e30), ()),
        set_manifest({"sha256": {}})(d, o)), tokenizer_call,
     "manifest.json does not list config.json, model.safetensors, vocab.parquet, token_table.safetensors"),
    ("art-1e30-with-manifest", "medtok", lambda d, o: edit_tensors(
        d, "token_table.safetensors", lambda t: t["embeddings"].fill_(1e30), ARTIFACT_FILES), tokenizer_call,
     "embeddings of 7 code(s) are too large (their norm overflows float32)"),
    ("art-inf-weights", "medtok", lambda d, o: edit_tensors(
        d, "token_table.safetensors", lambda t: t["weights"][0].fill_(float("inf")), ARTIFACT_FILES), tokenizer_call,
     "weights holds NaN or infinite values for 1 code(s)"),
    ("art-nan-model-weights", "medtok", lambda d, o: (
        save_file({"encoder.weight": torch.full((2, 2), float("nan"))}, str(d / "model.safetensors")),
        remanifest(d, ARTIFACT_FILES)), model_state_call, "tensor encoder.weight holds NaN or infinite values"),
    ("art-flipped-byte", "medtok", flip_byte("token_table.safetensors"), tokenizer_call,
     "token_table.safetensors differs from the sha256 recorded in"),
    ("art-manifest-list", "medtok", set_manifest(["config.json"]), tokenizer_call,
     "must be a JSON object {\"sha256\": {file: digest}}, got a list"),
    ("art-manifest-sha256-list", "medtok", set_manifest({"sha256": ["config.json"]}), tokenizer_call,
     "lacks its \"sha256\" object"),
    ("art-manifest-not-json", "medtok", lambda d, o: (d / "manifest.json").write_text("{sha256"), tokenizer_call,
     "manifest.json is not valid JSON"),
    ("art-manifest-bad-digest", "medtok", set_manifest({"sha256": {"config.json": "abc"}}), tokenizer_call,
     "the digest of 'config.json' is not a sha256 hex string"),
    ("art-manifest-absolute-path", "medtok", set_entry("{out}/huge.bin"), tokenizer_call, "is an absolute path"),
    ("art-manifest-dotdot", "medtok", set_entry("{rel}/huge.bin"), tokenizer_call, "leaves the folder ('..' or '.')"),
    ("art-manifest-etc-hostname", "medtok", set_entry("../../../../etc/hostname"), tokenizer_call,
     "leaves the folder"),
    ("art-symlink-out", "medtok", symlink_table_out, tokenizer_call, "points outside the folder (symlink)"),
    ("art-listed-file-missing", "medtok", lambda d, o: (
        remanifest(d, (*ARTIFACT_FILES, "README.md")), (d / "README.md").unlink()), tokenizer_call,
     "README.md is listed in"),
    ("art-finetune-cli-manifest-list", "medtok", set_manifest([]), FINETUNE, "got a list"),
    ("art-finetune-cli-no-manifest", "medtok", lambda d, o: (d / "manifest.json").unlink(), FINETUNE,
     "has no manifest.json"),
    # QA checkpoint: manifest, finite adapter and prefix module, adapter matching its base model and config
    ("ckpt-no-manifest", "ckpt", lambda d, o: (d / "manifest.json").unlink(), checkpoint_call,
     "has no manifest.json, so its files cannot be verified"),
    ("ckpt-lora-b-nan", "ckpt", nan_lora_b, checkpoint_call, "holds NaN or infinite values"),
    ("ckpt-lora-b-nan-eval-cli", "ckpt", nan_lora_b, EVAL, "lora_B.weight holds NaN or infinite values"),
    ("ckpt-lora-b-nan-no-remanifest", "ckpt", lambda d, o: edit_tensors(
        d, ADAPTER, lambda t: t[lora_keys(d, "lora_B")[0]].fill_(float("nan")), ()), checkpoint_call,
     "adapter_model.safetensors differs from the sha256"),
    ("ckpt-projector-nan", "ckpt", lambda d, o: edit_tensors(
        d, "projector.safetensors", lambda t: next(iter(t.values())).fill_(float("nan")), CKPT_FILES),
     checkpoint_call, "projector.safetensors: tensor"),
    ("ckpt-gpt2-adapter-in-llama", "ckpt", gpt2_adapter, checkpoint_call, "the adapter was trained on base model"),
    ("ckpt-gpt2-adapter-same-base-name", "ckpt", lambda d, o: gpt2_adapter(d, o, True), EVAL,
     "the LoRA adapter in"),
    ("ckpt-missing-lora-key", "ckpt", lambda d, o: edit_tensors(
        d, ADAPTER, lambda t: t.pop(lora_keys(d, "lora_A")[0]), CKPT_FILES), checkpoint_call, "1 missing key(s), e.g."),
    ("ckpt-unexpected-lora-key", "ckpt", lambda d, o: edit_tensors(
        d, ADAPTER, lambda t: t.update({"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 64)}), CKPT_FILES),
     checkpoint_call, "1 unexpected key(s), e.g. base_model.model.lm_head.lora_A.weight"),
    ("ckpt-rank-4-config-8", "ckpt", rank_four, checkpoint_call, "size mismatch for"),
    ("ckpt-adapter-r-vs-qa-config", "ckpt", lambda d, o: edit_json(
        d, "adapter_config.json", lambda c: c.update(r=4), CKPT_FILES), checkpoint_call,
     "r is 4 but qa_config.json says lora.r 8"),
    ("ckpt-prefix-tuning", "ckpt", lambda d, o: edit_json(
        d, "adapter_config.json", lambda c: c.update(peft_type="PREFIX_TUNING"), CKPT_FILES), EVAL,
     "peft_type is 'PREFIX_TUNING'"),
    ("ckpt-adapter-bin-pickle", "ckpt", pickled_adapter, EVAL, "adapter_model.bin (a pickle"),
    ("ckpt-adapter-config-list", "ckpt", lambda d, o: edit_json(d, "adapter_config.json", lambda c: [c], CKPT_FILES),
     checkpoint_call, "adapter_config.json must be a JSON object, got a list"),
    ("ckpt-manifest-list-ask-cli", "ckpt", set_manifest([]), ASK, "got a list"),
    ("ckpt-manifest-absolute", "ckpt", set_entry("{out}/huge.bin"), ASK, "is an absolute path"),
    ("ckpt-manifest-omits-qa-config", "ckpt", lambda d, o: remanifest(d, CKPT_FILES[1:]), checkpoint_call,
     "does not list qa_config.json"),
    ("ckpt-qa-config-edited", "ckpt", lambda d, o: edit_json(d, "qa_config.json", lambda c: c.update(cutoff_len=64)),
     checkpoint_call, "qa_config.json differs from the sha256"),
    # reference folders
    ("ref-no-manifest", "reference", lambda d, o: (d / "manifest.json").unlink(), reference_call,
     "reference folder"),
    ("ref-nan-weights", "reference", lambda d, o: edit_tensors(
        d, "reference.safetensors", lambda t: next(iter(t.values())).fill_(float("nan")), REF_FILES),
     reference_call, "holds NaN or infinite values"),
    ("ref-manifest-dotdot", "reference", set_entry("../medtok/config.json"), reference_call, "leaves the folder"),
    # model folders that would run their own code
    ("base-auto-map-config", "llama", auto_map("config.json"), base_model_call, "has an auto_map"),
    ("base-auto-map-tokenizer", "llama", auto_map("tokenizer_config.json"), base_model_call,
     "tokenizer_config.json has an auto_map"),
    ("base-auto-map-zero-shot-cli", "llama", auto_map("config.json"), ZERO_SHOT, "trust_remote_code=False"),
    ("text-encoder-auto-map", "llama", auto_map("config.json"), text_encoder_call, "text encoder folder"),
]


@pytest.mark.parametrize("name, fixture, damage, call, message", CASES, ids=[c[0] for c in CASES])
def test_damaged_folder_is_refused_with_one_error_and_nothing_changes(fx, tmp_path, monkeypatch, capsys, name, fixture,
                                                                      damage, call, message):
    folder = tmp_path / "fx" / fixture
    shutil.copytree(fx[fixture], folder, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    damage(folder, outside)
    hashed: list[Path] = []
    real_sha = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p, *a: hashed.append(Path(p)) or real_sha(p, *a))
    before, fixtures_before = tree_digest(tmp_path), tree_digest(fx["root"])
    capsys.readouterr()
    if getattr(call, "cli", False):
        with pytest.raises(SystemExit) as stop:
            call(folder, fx)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert stop.value.code == 2, err
        assert len(errors) == 1 and "Traceback" not in err, err
        assert message in errors[0], errors[0]
    else:
        with pytest.raises(UserError) as caught:
            call(folder, fx)
        assert message in str(caught.value), str(caught.value)
        assert "\n" not in str(caught.value)
    assert tree_digest(tmp_path) == before  # nothing written or changed (no eval_out/ft_out either)
    assert tree_digest(fx["root"]) == fixtures_before
    assert not any(outside in p.resolve().parents for p in hashed), hashed  # nothing outside was hashed
    assert not (outside / "PWNED").exists()  # no pickle unpickled, no model code run


def test_at_least_thirty_cases_in_every_area():
    areas = {c[0].split("-")[0] for c in CASES}
    assert len(CASES) >= 30 and areas == {"art", "ckpt", "ref", "base", "text"}


# ------------------------------------------------------------------------- legacy folders, explicitly
def test_legacy_folders_load_only_when_asked_and_with_a_warning(fx, tmp_path):
    for fixture, load in (("medtok", MedTokTokenizer.from_pretrained), ("ckpt", QAModel.from_pretrained),
                          ("reference", load_reference)):
        folder = tmp_path / fixture
        shutil.copytree(fx[fixture], folder)
        (folder / "manifest.json").unlink()
        with pytest.raises(UserError, match="has no manifest.json"):
            load(folder)
        with pytest.warns(UnverifiedFolderWarning, match="loading it unverified as asked"):
            assert load(folder, allow_unverified=True) is not None


# -------------------------------------------------------------------- the checkpoint's from_pretrained
def test_from_pretrained_restores_adapter_and_prefix_module_from_a_moved_copy(fx, tmp_path):
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(fx["ckpt"], moved)
    model = QAModel.from_pretrained(moved)
    saved = load_file(str(fx["ckpt"] / ADAPTER))
    from peft import get_peft_model_state_dict

    restored = get_peft_model_state_dict(model.lm)
    assert set(restored) == set(saved) and all(torch.equal(restored[k].float(), saved[k].float()) for k in saved)
    assert any(float(v.abs().sum()) > 0 for k, v in saved.items() if "lora_B" in k)  # a real, non-zero adapter
    projector = load_file(str(fx["ckpt"] / "projector.safetensors"))
    assert all(torch.equal(model.projector.state_dict()[k].float(), v) for k, v in projector.items())
    items = tiny_questions(6)
    assert model.score(items) == QAModel.from_pretrained(fx["ckpt"]).score(items)
    text = repr(model)
    for part in (f"checkpoint={moved}", "LlamaForCausalLM", "adapter=LoRA r=8 alpha=16", "prefix_mode='medtok'",
                 "prefix_module=Projector"):
        assert part in text, text
    assert QAModel.from_pretrained.__doc__ and "adapter" in QAModel.from_pretrained.__doc__


def test_adapter_config_holds_the_portable_base_model_reference_not_a_cache_path(fx):
    adapter = json.loads((fx["ckpt"] / "adapter_config.json").read_text())
    qa_config = json.loads((fx["ckpt"] / "qa_config.json").read_text())
    assert adapter["base_model_name_or_path"] == qa_config["base_model"] == str(fx["llama"])
    manifest = json.loads((fx["ckpt"] / "manifest.json").read_text())["sha256"]
    assert sorted(manifest) == sorted(CKPT_FILES)  # relative names, every file loading reads
    assert not any(Path(n).is_absolute() for n in manifest)


# ----------------------------------------------------------------------------------- the token cache
def _cache_entries() -> list[Path]:
    return sorted((token_cache.cache_dir() / token_cache.CACHE_SUBDIR).glob("*.arrow"))


def _rewrite_ids(entry: Path, edit) -> None:
    """Rewrite the Arrow entry well-formed, with edited token ids (the checksum is left as it was)."""
    from datasets import Dataset

    rows = Dataset.from_file(str(entry)).to_dict()
    edit(rows)
    data = Dataset.from_dict(rows, features=Dataset.from_file(str(entry)).features)
    tmp = entry.with_suffix(".tmp")
    from datasets.arrow_writer import ArrowWriter

    with ArrowWriter(path=str(tmp), features=data.features) as writer:
        writer.write_table(data.data.table)
        writer.finalize()
    os.replace(tmp, entry)


def _flip_ids(rows):
    rows["input_ids"][1][:40] = [i ^ 0x5 for i in rows["input_ids"][1][:40]]


def _huge_id(rows):
    rows["input_ids"][0][3] = 2 ** 40


CACHE_DAMAGE = [
    ("truncated", lambda e: e.write_bytes(e.read_bytes()[: len(e.read_bytes()) // 2]), "checksum mismatch"),
    ("bit-flipped-ids", lambda e: _rewrite_ids(e, _flip_ids), "checksum mismatch"),
    ("id-out-of-vocab", lambda e: _rewrite_ids(e, _huge_id), "checksum mismatch"),
    ("id-out-of-vocab-checksum-matching", lambda e: (
        _rewrite_ids(e, _huge_id), e.with_name(e.name + ".sha256").write_text(integrity.sha256_file(e))),
     "token ids outside the vocabulary"),
    ("no-checksum-legacy", lambda e: e.with_name(e.name + ".sha256").unlink(), "no checksum beside it"),
]


@pytest.mark.parametrize("name, damage, reason", CACHE_DAMAGE, ids=[c[0] for c in CACHE_DAMAGE])
def test_damaged_token_cache_entry_is_rebuilt_with_a_note_never_used(fx, tmp_path, monkeypatch, capfd, name, damage,
                                                                     reason):
    monkeypatch.setenv("MEDTOK_CACHE_DIR", str(tmp_path / "cache"))
    model = QAModel.from_pretrained(fx["ckpt"])
    items = tiny_questions(5, seed=4)
    fresh = model.score(items)
    (entry,) = _cache_entries()
    intact = entry.read_bytes()
    damage(entry)
    capfd.readouterr()
    assert model.score(items) == fresh  # the damaged entry was not used
    err = capfd.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: token cache entry")]
    assert len(notes) == 1 and reason in notes[0] and "Traceback" not in err, err
    assert entry.read_bytes() == intact  # rebuilt as it was, with its checksum beside it
    assert entry.with_name(entry.name + ".sha256").read_text().strip() == integrity.sha256_file(entry)
    assert model.score(items) == fresh
    assert "note:" not in capfd.readouterr().err  # the next run reads it silently


# ------------------------------------------------------------------------------ no remote code, ever
def test_every_transformers_load_in_the_package_passes_trust_remote_code_false():
    root = Path(__file__).resolve().parent.parent
    calls = []
    for file in root.glob("*/**/*.py"):
        if file.parts[len(root.parts)] in ("tests", ".venv") or ".venv" in file.parts:
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id.startswith("Auto")):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("trust_remote_code"), ast.Constant) and kw["trust_remote_code"].value is False
                calls.append((f"{file.relative_to(root)}:{node.lineno}", ok))
    assert len(calls) >= 6  # base_model (4) and text_encoder (3) at least
    assert all(ok for _, ok in calls), [c for c, ok in calls if not ok]


# ------------------------------------------------------------- linked output read back by the pipeline
def test_pipeline_reruns_a_stage_whose_linked_output_was_damaged_after_it_finished(tmp_path, capsys):
    from recipes.pipeline import Stage, _stamp_path, is_up_to_date, stamp_finished

    linked = tmp_path / "linked" / "linked.jsonl"
    write_jsonl(linked, tiny_questions(4))
    stage = Stage(group="link", name="link", title="linking", argv=["python", "-m", "recipes.link"],
                  outputs=[linked], key="k1")
    stamp_finished(tmp_path, stage, 1.0, 1.0)
    assert is_up_to_date(tmp_path, stage)
    before = tree_digest(tmp_path)
    text = linked.read_text().replace("diabetes", "diabetez", 1)  # one edited byte range, still valid JSONL
    linked.write_text(text)
    capsys.readouterr()
    assert not is_up_to_date(tmp_path, stage) and not is_up_to_date(tmp_path, stage)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "differs from what stage 'link' wrote" in notes[0]
    assert {k: v for k, v in tree_digest(tmp_path).items() if "linked.jsonl" not in k} == \
        {k: v for k, v in before.items() if "linked.jsonl" not in k}  # deciding changed nothing
    stamp = json.loads(_stamp_path(tmp_path, stage).read_text())
    del stamp["outputs_sha256"]  # a stamp from before digests were recorded: still reused
    _stamp_path(tmp_path, stage).write_text(json.dumps(stamp))
    assert is_up_to_date(tmp_path, stage)


def test_legacy_checkpoint_through_the_commands_only_with_the_flag(fx, tmp_path, capfd):
    legacy = tmp_path / "legacy"
    shutil.copytree(fx["ckpt"], legacy)
    (legacy / "manifest.json").unlink()
    out = tmp_path / "eval_out"
    argv = ["--data", str(fx["linked"]), "--checkpoints", str(legacy), "--output", str(out), "--plots", "false"]
    with pytest.raises(SystemExit) as stop:
        eval_cli.main(argv)
    assert stop.value.code == 2 and "--allow_unverified true" in capfd.readouterr().err and not out.exists()
    with pytest.warns(UnverifiedFolderWarning):
        eval_cli.main(argv + ["--allow_unverified", "true"])
    assert (out / "results.json").is_file()
    with pytest.warns(UnverifiedFolderWarning):
        answered = ask_cli.main(["--checkpoint", str(legacy), "--no-linker", "--allow_unverified", "--question",
                                 "A patient has fever. Which?\nA: fever\nB: cough"])
    assert answered == 0  # 2 when the question failed


def test_a_cached_hub_model_with_an_auto_map_is_refused_before_transformers_loads_it(fx, monkeypatch):
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--evil--remote-code"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(fx["llama"], snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    try:
        auto_map("config.json")(snapshot, snapshot)
        with pytest.raises(UserError, match="has an auto_map"):
            load_base_model("evil/remote-code", "float32")
        assert not (snapshot / "PWNED").exists()
    finally:
        shutil.rmtree(repo)
