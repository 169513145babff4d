"""A new dataset layout is one file: written here to a temporary folder, imported, and run through
``auto`` detection, loading, the default tier and the split, with no other file touched."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest

TOY_LAYOUT = textwrap.dedent('''
    """``toy``: {"prompt": ..., "choices": [...], "correct": 0, "level": "easy"|"hard", "topic": ...}."""

    from disease_linking.layouts.base import Layout, register
    from disease_linking.questions import LETTERS, parse_linked
    from disease_linking.splits import split_by_group

    LEVELS = {"easy": "Basic", "hard": "Expert"}


    @register
    class Toy(Layout):
        name = "toy"
        summary = "toy questions: prompt, choices, correct index, level, topic"
        keys = ("prompt", "choices", "correct")  # what auto recognises a record by
        tiers = ("Basic", "Expert")
        default_tier = "Expert"  # what fine-tuning trains on unless --data.tier says otherwise
        split_by = "topic"

        def parse(self, raw, item_id):
            options = dict(zip(LETTERS, raw["choices"]))
            return parse_linked({"id": item_id, "question": raw["prompt"], "options": options,
                                 "answer": LETTERS[raw["correct"]], "tier": LEVELS[raw["level"]],
                                 "subject": raw["topic"]}, item_id)

        def split(self, items, val_fraction, seed):
            return split_by_group(items, val_fraction, seed, key=lambda item: item.subject)  # whole topics
''')


@pytest.fixture
def toy_layout(tmp_path):
    from disease_linking.layouts.base import _REGISTRY

    path = tmp_path / "toy_layout.py"
    path.write_text(TOY_LAYOUT)
    spec = importlib.util.spec_from_file_location("toy_layout", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_layout"] = module
    spec.loader.exec_module(module)
    yield module
    _REGISTRY.pop("toy")
    sys.modules.pop("toy_layout")


def write_toy_questions(path, n=24):
    rows = [{"prompt": f"Question {i}: which organ?", "choices": ["heart", "lung", f"liver {i}"],
             "correct": i % 3, "level": "hard" if i % 2 else "easy", "topic": f"topic-{i % 6}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_toy_layout_in_one_file_is_detected_loaded_and_split_by_its_own_policy(toy_layout, tmp_path):
    from disease_linking.layouts import detect_layout, layout_names, load_question_items, policy
    from qa.training import DataOptions, load_questions, make_split, split_record

    data = write_toy_questions(tmp_path / "toy.jsonl")
    assert "toy" in layout_names()

    items, skipped = load_question_items(data, "auto")  # auto detection through the registry
    assert skipped == [] and len(items) == 24
    assert detect_layout(json.loads(data.read_text().splitlines()[0]), "q").name == "toy"
    assert items[1].answer == "B" and items[1].tier == "Expert" and items[1].subject == "topic-1"

    opts = DataOptions(train_file=str(data), layout="toy", val_fraction=0.34)
    assert opts.tier == "Expert" and policy("toy").default_tier == "Expert"  # the layout's default
    train_items = load_questions(opts)
    assert {it.tier for it in train_items} == {"Expert"} and len(train_items) == 12
    train, val = make_split(train_items, opts)  # the layout's split: whole topics held out
    assert val and train and not {it.subject for it in train} & {it.subject for it in val}
    assert split_record(opts, train, val)["split_by"] == "topic"


def test_builtin_policies_are_unchanged():
    from disease_linking.layouts import policy, question_file
    from qa.training import DataOptions

    assert DataOptions().tier == DataOptions(layout="meddx").tier == "Intermediate"
    assert DataOptions(layout="medmcqa").tier == ""  # no tiers: every question
    assert policy("auto").name == "meddx"
    assert question_file(None, "auto").name == question_file(None, "meddx").name == "MedDDx.json"
    assert question_file(None, "linked") is None


# ----------------------------------------------------------------------------- a code system: one object
def test_a_new_code_system_is_one_registered_object(tmp_path):
    import pandas as pd

    from medtok_core.code_systems import CODE_SYSTEMS, CodeSystem, builtin_systems, register_code_system
    from medtok_core.graph import xref_namespace
    from medtok_core.vocab import VocabConfig, build_vocab, load_user_codes

    def load_toy():  # what a package would provide: three codes, one level of hierarchy
        return pd.DataFrame({"system": "TOYCODE", "code": ["T1", "T1.5", "T2"],
                             "description": ["toy one", "toy one and a half", "toy two"],
                             "parent": ["", "T1", ""], "synonyms": [[], ["half toy"], []]})

    register_code_system(CodeSystem("TOYCODE", load_toy, ("pandas",), canonical=lambda c: c.replace("-", "."),
                                    unpadded=lambda c: "T" + c.lstrip("T").lstrip("0"), xref_namespace="TOY"))
    try:
        assert "TOYCODE" in builtin_systems()
        vocab = build_vocab(VocabConfig(systems=["TOYCODE"], use_cache=False))
        assert vocab.counts() == {"TOYCODE": 3} and vocab.row(vocab.lookup("TOYCODE:T1.5"))["parent"] == "T1"
        assert vocab.normalize("TOYCODE", "t9-1") == "T9.1"  # its canonical spelling, for unknown codes too
        assert vocab.id_of("TOYCODE", "T02") == vocab.lookup("TOYCODE:T2")  # its leading-zero rule
        assert xref_namespace("TOYCODE") == "TOY"  # how the graph attaches its codes
        csv = tmp_path / "codes.csv"
        csv.write_text("system,code,description,parent\nTOYCODE,t3-1,toy three,T1\n")
        assert load_user_codes(csv, base=load_toy())["code"].tolist() == ["T3.1"]
    finally:
        CODE_SYSTEMS.pop("TOYCODE")
