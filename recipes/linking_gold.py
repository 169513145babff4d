"""``python -m recipes.linking_gold {sample|build}``: draw the annotation sample of the linking gold
standard, or build its JSONL from the hand annotations (see :mod:`eval.linking_gold`)."""

from __future__ import annotations

import sys

from eval.linking_gold import GOLD_V1, _meddx, build, load_gold, sample_questions


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sample"]:
        v1, _ = load_gold(GOLD_V1)
        for tier, ids in sample_questions(_meddx(), set(v1["questions"])).items():
            print(tier, " ".join(ids))
    elif argv[:1] == ["build"]:
        print(build())
    else:
        print("usage: python -m recipes.linking_gold {sample|build}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
