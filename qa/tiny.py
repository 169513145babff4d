"""Tiny random stand-ins (tokenizer, LLaMA, MedTok artifact) for tests, smoke runs and benchmarks.

They exercise every code path (chat template, LoRA, prefix, DeepSpeed) in seconds; nothing
learned by them means anything.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from commons.io import atomic_dir

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    from qa.prompts import SYSTEM_PROMPT

    words = ("question options answer with the letter a b c d e or which of following is most likely "
             "diagnosis patient disease gene drug medical codes linked to this system user assistant "
             "diabetes type heart failure kidney liver fever cough pain treatment").split()
    return [SYSTEM_PROMPT, " ".join(words), "A B C D E", "A: B: C: D: E:", "0123456789.-:"] * 3


def build_tiny_tokenizer(path: str | Path, vocab_size: int = 300):
    """A byte-level BPE tokenizer with a ChatML template, saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


TINY_ARCHITECTURES = ("llama", "gpt2", "gpt_neox")


def _tiny_config(arch: str, tok, hidden: int, layers: int):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    if arch == "llama":
        return LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512, tie_word_embeddings=True, **ids)
    if arch == "gpt2":
        return GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **ids)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=512,
                             **ids)
    raise ValueError(f"tiny architecture must be one of {', '.join(TINY_ARCHITECTURES)}, got {arch!r}")


def build_tiny_lm(path: str | Path, arch: str = "llama", seed: int = 0, hidden: int = 64, layers: int = 2,
                  vocab_size: int = 300) -> Path:
    """A random 2-layer causal LM (LLaMA, GPT-2 or GPT-NeoX) with the tiny tokenizer, saved as an
    HF folder (bf16 weights)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    with atomic_dir(path) as tmp:
        tok = build_tiny_tokenizer(tmp, vocab_size)
        config = _tiny_config(arch, tok, hidden, layers)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        model.save_pretrained(tmp)
    return path


def build_tiny_llama(path: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                     vocab_size: int = 300) -> Path:
    return build_tiny_lm(path, "llama", seed, hidden, layers, vocab_size)


def build_tiny_medtok(path: str | Path, codes: list[tuple[str, str, str]], dim: int = 8, top_k: int = 2,
                      codebook: int = 24, seed: int = 0) -> Path:
    """A random MedTok artifact folder in the documented format for ``codes`` = [(system, code, description)]."""
    import pandas as pd

    from medtok_core.artifact import write_artifact

    g = torch.Generator().manual_seed(seed)
    n = len(codes)
    third = codebook // 3
    config = {"top_k": top_k, "model": {"dim": dim},
              "codebook": {"size": codebook,
                           "regions": {"text": [0, third], "shared": [third, 2 * third], "graph": [2 * third, codebook]}},
              "text_encoder": {"path": None}}
    vocab = pd.DataFrame({"code_id": list(range(n)), "system": [c[0] for c in codes],
                          "code": [c[1] for c in codes], "description": [c[2] for c in codes], "parent": [""] * n})
    weights = torch.rand(n, 4, top_k, generator=g)
    table = {"ids": torch.randint(0, codebook, (n, 4, top_k), generator=g, dtype=torch.int32),
             "weights": weights / weights.sum(-1, keepdim=True),
             "embeddings": torch.randn(n, 4 * dim, generator=g)}
    # No trained model behind a random table: an empty weight file (encode_new is unavailable).
    return write_artifact(path, config, vocab, table, {})


TINY_CODES = [("ICD10CM", "E11.9", "Type 2 diabetes mellitus without complications"),
              ("ICD10CM", "I50.9", "Heart failure, unspecified"),
              ("ICD10CM", "N18.9", "Chronic kidney disease, unspecified"),
              ("ICD10CM", "K76.0", "Fatty liver, not elsewhere classified"),
              ("ICD10CM", "J18.9", "Pneumonia, unspecified organism"),
              ("ICD10CM", "R50.9", "Fever, unspecified"),
              ("ATC", "A10BA02", "metformin")]
_DISEASES = ["diabetes", "heart failure", "kidney disease", "fatty liver", "pneumonia", "fever"]


def tiny_questions(n: int, seed: int = 0, tier: str = "Intermediate"):
    """Synthetic linked questions whose answer follows from the stem's linked code.

    Option sets repeat (groups of identical options, as in MedDDx), so the option-set split has
    something to respect.
    """
    from disease_linking.questions import CodeRef, MCQItem, Mention

    rng = random.Random(seed)
    items = []
    for i in range(n):
        k = rng.randrange(len(_DISEASES))
        # 10 possible option sets contain the answer: identical sets recur across questions
        others = [d for j, d in enumerate(_DISEASES) if j != k]
        order = rng.sample(sorted(rng.sample(others, 3)) + [_DISEASES[k]], 4)
        options = {"ABCD"[j]: d for j, d in enumerate(order)}
        stem = f"A patient has {_DISEASES[k]}. Which of the following is the most likely diagnosis?"
        start = stem.index(_DISEASES[k])
        system, code, _ = TINY_CODES[k]
        mentions = [Mention(_DISEASES[k], start, start + len(_DISEASES[k]), "stem", [CodeRef(system, code, 1.0)])]
        for letter, text in options.items():
            j = _DISEASES.index(text)
            mentions.append(Mention(text, 0, len(text), f"option:{letter}",
                                    [CodeRef(TINY_CODES[j][0], TINY_CODES[j][1], 0.9)]))
        if i % 7 == 3:
            mentions = []  # some questions link to nothing: the empty prefix must work
        answer = next(x for x, t in options.items() if t == _DISEASES[k])
        items.append(MCQItem(f"tiny-{i:04d}", stem, options, answer, tier, mentions=mentions))
    return items
