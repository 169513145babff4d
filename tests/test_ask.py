"""``ask``: one id style, and ties between the top options reported instead of broken by letter."""

from __future__ import annotations

import json
from types import SimpleNamespace

from qa.ask import Asker, format_answer, parse_question, tied_letters


def test_every_question_without_an_id_gets_the_same_id_style():
    text = parse_question("Which is it?\nA: diabetes\nB: fever", 0)
    query = parse_question(json.dumps({"query": "Which?\nA: a\nB: b"}), 1)
    linked = parse_question(json.dumps({"question": "Which?", "options": {"A": "a", "B": "b"}}), 2)
    assert [text.id, query.id, linked.id] == ["ask-00001", "ask-00002", "ask-00003"]
    own = parse_question(json.dumps({"id": "mine", "question": "Which?", "options": {"A": "a", "B": "b"}}), 3)
    assert own.id == "mine"


def test_tied_letters():
    assert tied_letters({"A": 0.2, "B": 0.4, "C": 0.4}) == ["B", "C"]
    assert tied_letters({"A": 0.1, "B": 0.6, "C": 0.3}) == []
    assert tied_letters({"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}) == ["A", "B", "C", "D"]


class _TieModel:
    """Scores every option alike, as a model that cannot tell them apart does."""

    options = SimpleNamespace(prefix_mode="none")
    encoder = SimpleNamespace(cache_tokens=True, encode=lambda item: SimpleNamespace(truncated=False, input_ids=[]))
    method = SimpleNamespace(item_prefix=lambda item: SimpleNamespace(codes=[]))

    def score(self, items, batch_size):
        (item,) = items
        probs = {letter: 1 / len(item.options) for letter in item.options}
        return [{"id": item.id, "pred": min(probs), "probs": probs, "n_codes": 0}]


def test_a_tie_is_reported_not_broken_silently():
    result = Asker(_TieModel()).answer(parse_question("Which?\nA: x\nB: y\nC: z"))
    assert result["tied"] == ["A", "B", "C"] and result["answer"] == "A"
    text = format_answer(result)
    assert text.splitlines()[-1] == ("answer: a tie between A, B, C (33.3% each): the model does not choose "
                                     "between them (A is only the first by letter)")
    clear = dict(result, probs={"A": 0.2, "B": 0.7, "C": 0.1}, answer="B", tied=[])
    assert format_answer(clear).splitlines()[-1] == "answer: B: y"
