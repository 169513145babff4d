"""``medtok-qa kgqa``: generate the knowledge-grounded QA benchmark from the knowledge graph.

    python -m recipes.kgqa --output runs/kgqa --seed 0
    medtok-qa kgqa --test_per_condition 100 --max_train 400

Writes ``<output>/questions.jsonl`` (linked JSONL: stem, four options, answer, tier = split,
subject = family, codes of stem and options as mentions), ``heldout_edges.csv`` (the KG edges of
the held-out test facts, for MedTok's ``--data.heldout_edges``), ``splits.json`` (stem entities per
family and split) and ``summary.json`` (counts per family and split, answer-letter shares, the
majority-letter and popularity shortcut baselines on each test condition). How the questions are
built: ``qa/kgqa.py``; the experiment: ``configs/pipeline_kgqa.yaml``, ``docs/kgqa.md``.
"""

from __future__ import annotations

import json

from commons.config import parse_config, save_config
from commons.errors import cli_entry
from commons.io import check_writable_dir
from qa.kgqa import KGQAConfig, generate, load_graph, write_dataset


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(KGQAConfig, argv, prog="python -m recipes.kgqa")
    check_writable_dir(cfg.output, "--output")
    kg, vocab = load_graph(cfg)
    ds = generate(kg, vocab, cfg)
    out = write_dataset(ds, kg, cfg.output, lambda tmp: save_config(cfg, tmp / "kgqa_config.yaml"))
    fam = ds.summary["families"]["all"]
    print(f"{len(ds.items)} questions -> {out}: " + ", ".join(f"{s} {fam[s]['n']}" for s in fam)
          + f"; {ds.summary['heldout_edges']} held-out KG edges")
    print(json.dumps({s: {k: v for k, v in r.items() if k != "answer_letters"} for s, r in fam.items()}))
    return ds.summary


if __name__ == "__main__":
    main()
