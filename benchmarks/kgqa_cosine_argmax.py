"""How often the signal ``medtok-cosine`` hands the LLM is right on its own: the option whose codes'
mean MedTok embedding has the highest cosine to the stem's, per KG-QA split and family (no LLM,
no training; the same features as ``qa.prefix_methods.medtok_cosine.option_features``).

    python benchmarks/kgqa_cosine_argmax.py [--questions runs/pipeline_kgqa/kgqa/questions.jsonl]
        [--artifact runs/pipeline_kgqa/medtok/artifact] [--out benchmarks/results/kgqa_cosine_argmax.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from disease_linking.questions import read_jsonl
from medtok_core.tokenizer import MedTokTokenizer
from qa.prefix import CodeSource
from qa.prefix_methods.medtok_cosine import option_features


def cosine_argmax_accuracy(questions: str, artifact: str) -> dict:
    codes = CodeSource(MedTokTokenizer.from_pretrained(artifact), "stem")
    hits: dict[str, list[bool]] = defaultdict(list)
    for item in read_jsonl(questions):
        letters = list(item.options)
        option_codes = codes.option_codes(item)
        features = option_features(codes.embed(codes.known_codes(item, fields=["stem"])),
                                   [codes.embed(option_codes[x]) for x in letters])
        right = letters[int(features[:, 1].argmax())] == item.answer  # softmax weight: the cosine's argmax
        test = ["Basic+Expert"] if item.tier in ("Basic", "Expert") else []  # the two test conditions together
        for group in (item.tier, f"{item.tier}/{item.subject}", *test):
            hits[group].append(right)
    return {g: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for g, v in sorted(hits.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", default="runs/pipeline_kgqa/kgqa/questions.jsonl")
    parser.add_argument("--artifact", default="runs/pipeline_kgqa/medtok/artifact")
    parser.add_argument("--out", default="benchmarks/results/kgqa_cosine_argmax.json")
    args = parser.parse_args()
    result = {"questions": args.questions, "artifact": args.artifact,
              "groups": cosine_argmax_accuracy(args.questions, args.artifact)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["groups"], indent=2))


if __name__ == "__main__":
    main()
