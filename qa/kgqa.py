"""Knowledge-grounded QA: multiple-choice questions generated from the project's own knowledge graph.

Each question asks about one ``indication`` fact between an ICD-10-CM category (a disease) and an
ATC chemical substance (a drug), lifted from the KG to codes by :mod:`medtok_core.heldout`:

- ``drug_for_condition``: "Which of the following drugs is indicated for <condition>?" (ATC options);
- ``condition_for_drug``: "Which of the following conditions is treated by <drug>?" (ICD-10-CM options).

The output is the linked-JSONL interchange format with the stem's and every option's code as
mentions, so no linking step is needed and every prefix method and reference reads it unchanged.

Design (what keeps the benchmark honest):

- **Entities.** A disease is an ICD-10-CM category (``E11``); the indications of its finer codes
  count for it. A drug is an ATC level-5 name: codes sharing a name (prednisolone has six) are one
  drug, so a distractor can never be the answer under another code.
- **Splits by stem entity.** Per family, stems are shuffled (seeded) into ``test_heldout``,
  ``test_ingraph`` and the QA training pool; one question per stem. The training pool is tier
  ``Intermediate`` (the fine-tune draws its validation slice from it, which, at one question per
  stem, is a split by stem too), the in-graph test tier ``Basic``, the held-out test tier
  ``Expert``; the family is the question's ``subject``.
- **No fact leaks into training.** No training question asks about a test pair, in either family.
- **Held-out condition.** Every KG edge that supports a held-out pair is written to the held-out
  edge file (:func:`medtok_core.heldout.write_heldout`), which MedTok's ``data.heldout_edges``
  removes before training. An in-graph test pair that lost its whole support to that removal is
  dropped (counted in the summary), so "in-graph" questions really are in the graph.
- **Distractors** are never a true answer of the stem (on the full graph, the stem's whole
  category included), come from the answer's ATC anatomical group / ICD-10-CM chapter when it has
  enough, and are the candidates closest to the answer in how often they are the answer in
  training (so "pick the most familiar option" does not work); answer letters are balanced.

Everything is a function of the graph, the vocabulary and ``seed``.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from commons.config import require_range
from commons.errors import ConfigError, UserError
from disease_linking.questions import LETTERS, CodeRef, MCQItem, Mention

RELATION = "indication"
SPLIT_TIERS = {"train": "Intermediate", "test_ingraph": "Basic", "test_heldout": "Expert"}
TEST_SPLITS = ("test_ingraph", "test_heldout")
N_OPTIONS = 4
_ICD_CATEGORY = re.compile(r"^[A-Z][0-9][0-9A-Z]$")  # E11, C7A: not blocks (E08-E13) nor chapters (4)
_ATC_SUBSTANCE = re.compile(r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$")  # level 5: A10BA02


@dataclass(frozen=True)
class Family:
    """One question family: which side of the indication fact is the stem."""

    name: str
    stem_side: str  # "disease" or "drug"
    template: str  # the stem, with {name} for the stem entity's description


FAMILIES = {f.name: f for f in (
    Family("drug_for_condition", "disease", "Which of the following drugs is indicated for {name}?"),
    Family("condition_for_drug", "drug", "Which of the following conditions is treated by {name}?"),
)}


@dataclass
class KGQAConfig:
    """Generate knowledge-grounded QA (linked JSONL) and its held-out edge file from the KG."""

    output: str = "runs/kgqa"  # folder of questions.jsonl, heldout_edges.csv, summary.json
    # The graph MedTok trains on (must match the MedTok config's data.* options of the same names).
    data_dir: str | None = None  # data directory (default: $MEDTOK_DATA_DIR or ../shared/data)
    kg_csv: str | None = None  # PrimeKG-style kg.csv merged into the graph
    skip_sources: list[str] = field(default_factory=list)  # offline KG sources left out
    user_codes: str | None = None  # CSV of your own codes (as MedTok's data.user_codes)
    families: list[str] = field(default_factory=lambda: list(FAMILIES), metadata={"choices": lambda: list(FAMILIES)})
    seed: int = 0  # seed of the stem split, answers, distractors and letters
    test_per_condition: int = 100  # test questions per family in each condition (in-graph, held-out)
    max_train: int = 400  # QA training-pool questions per family at most (0: every remaining stem)
    # Distractors are drawn at random among this many candidates closest to the answer's training
    # frequency (more: more variety, looser frequency match).
    distractor_pool: int = 4

    def __post_init__(self):
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ConfigError(f"families: {unknown[0]!r} is not a family; choose from {', '.join(FAMILIES)}"
                              if unknown else f"families is empty; choose from {', '.join(FAMILIES)}")
        require_range(self, "test_per_condition", 1)
        require_range(self, "max_train", 0)
        require_range(self, "distractor_pool", N_OPTIONS - 1)


@dataclass
class Entities:
    """The indication facts between entities, and what the questions need to know of each entity."""

    pairs: pd.DataFrame  # disease, drug (entity keys), x, y (the supporting KG edge's node ids)
    code: dict[str, tuple[str, str]]  # entity key -> (system, code) written into the mentions
    name: dict[str, str]  # entity key -> description shown in the question
    group: dict[str, str]  # entity key -> ATC anatomical group / ICD-10-CM chapter (distractor matching)


@dataclass
class KGQADataset:
    items: list[MCQItem]
    removed: pd.DataFrame  # src, dst (node ids), relation: the held-out edges
    splits: dict[str, dict[str, list[str]]]  # family -> split -> stem entity keys
    summary: dict


# ----------------------------------------------------------------------------------- entities
def _top_ancestor(parent: np.ndarray, ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """For each id, its nearest ancestor-or-self with ``keep`` true (-1 when none)."""
    out = np.full(len(ids), -1, dtype=np.int64)
    cur = ids.astype(np.int64).copy()
    for _ in range(32):  # deeper than any code hierarchy
        live = (out < 0) & (cur >= 0)
        if not live.any():
            break
        hit = live & keep[np.where(cur >= 0, cur, 0)]
        out[hit] = cur[hit]
        cur = np.where(live & ~hit, parent[np.where(cur >= 0, cur, 0)], -1)
    return out


def _root(parent: np.ndarray, ids: np.ndarray) -> np.ndarray:
    cur = ids.astype(np.int64).copy()
    for _ in range(32):
        up = parent[cur]
        if (up < 0).all():
            break
        cur = np.where(up >= 0, up, cur)
    return cur


def _display(description: str) -> str:
    """A description as it reads mid-sentence: "Type 2 diabetes mellitus" -> "type 2 diabetes mellitus"
    (an acronym such as "HIV disease" keeps its capitals)."""
    if len(description) > 1 and description[0].isupper() and description[1].islower():
        return description[0].lower() + description[1:]
    return description


def indication_entities(kg, vocab) -> Entities:
    """Indication facts between ICD-10-CM categories and ATC substance names, with their KG support."""
    from medtok_core.heldout import relation_pairs

    table = vocab.table
    parent = np.asarray(vocab.parent_id, dtype=np.int64)
    icd = table[table.system == "ICD10CM"]
    atc = table[(table.system == "ATC") & table.code.str.match(_ATC_SUBSTANCE)]
    if icd.empty or atc.empty:
        raise UserError("the vocabulary has no ICD-10-CM or no ATC level-5 codes: knowledge-grounded "
                          "questions need both")
    pairs = relation_pairs(kg, RELATION, icd.code_id.to_numpy(), atc.code_id.to_numpy())
    if pairs.empty:
        raise UserError(f"the knowledge graph has no {RELATION!r} edges between ICD-10-CM and ATC codes")
    is_category = np.zeros(len(table), dtype=bool)
    cat_rows = icd.code.str.match(_ICD_CATEGORY).to_numpy()
    is_category[icd.code_id.to_numpy()[cat_rows]] = True
    category = _top_ancestor(parent, pairs.a.to_numpy(), is_category)
    codes = table.code.to_numpy(dtype=object)
    descriptions = table.description.astype(str).to_numpy(dtype=object)
    drug_key = np.array([" ".join(str(descriptions[b]).lower().split()) for b in pairs.b.to_numpy()], dtype=object)
    ok = category >= 0
    frame = pd.DataFrame({"disease": ["ICD10CM:" + codes[c] for c in category[ok]], "drug": drug_key[ok],
                          "drug_code": pairs.b.to_numpy()[ok], "x": pairs.x.to_numpy()[ok],
                          "y": pairs.y.to_numpy()[ok]})
    code: dict[str, tuple[str, str]] = {}
    name: dict[str, str] = {}
    group: dict[str, str] = {}
    chapters = _root(parent, category[ok])
    for key, cid, chap in zip(frame.disease, category[ok], chapters, strict=True):
        if key not in code:
            code[key], name[key] = ("ICD10CM", str(codes[cid])), _display(str(descriptions[cid]))
            group[key] = "ICD10CM chapter " + str(codes[chap])
    # One code per drug name: the smallest, so the choice does not depend on the graph's edge order.
    for key, cid in frame.groupby("drug").drug_code.min().items():
        code[key], name[key] = ("ATC", str(codes[cid])), key
        group[key] = "ATC " + str(codes[cid])[0]
    frame = frame.drop(columns="drug_code").drop_duplicates(ignore_index=True)
    return Entities(frame, code, name, group)


# ------------------------------------------------------------------------------------ generation
def _stem_and_answer_columns(family: Family) -> tuple[str, str]:
    return ("disease", "drug") if family.stem_side == "disease" else ("drug", "disease")


def _fact(family: Family, stem: str, answer: str) -> tuple[str, str]:
    """The (disease, drug) fact a question asks about."""
    return (stem, answer) if family.stem_side == "disease" else (answer, stem)


def split_stems(stems: list[str], cfg: KGQAConfig, rng: random.Random) -> dict[str, list[str]]:
    """Stem entities -> held-out test, in-graph test and the QA training pool (disjoint)."""
    order = sorted(stems)
    rng.shuffle(order)
    n = cfg.test_per_condition
    if len(order) < 2 * n + 1:
        raise UserError(f"only {len(order)} stems with enough distractors; lower test_per_condition "
                          f"(now {n}) so that both test conditions and training get some")
    train = order[2 * n:]
    return {"test_heldout": order[:n], "test_ingraph": order[n:2 * n],
            "train": train[:cfg.max_train] if cfg.max_train else train}


def generate(kg, vocab, cfg: KGQAConfig) -> KGQADataset:
    """The questions, the held-out edges and the summary (counts, letters, shortcut baselines)."""
    ent = indication_entities(kg, vocab)
    truth: dict[str, dict[str, set[str]]] = {}  # side -> entity -> entities it is indicated with
    for side, other in (("disease", "drug"), ("drug", "disease")):
        truth[side] = {k: set(v) for k, v in ent.pairs.groupby(side)[other].unique().items()}
    families = [FAMILIES[f] for f in cfg.families]
    rng = random.Random(cfg.seed)

    def candidates(family: Family, stem: str) -> list[str]:
        side = _stem_and_answer_columns(family)[1]
        return sorted(set(truth[side]) - truth[family.stem_side][stem])

    # 1. stems with at least N_OPTIONS - 1 possible distractors, split by stem entity.
    splits = {}
    for family in families:
        stems = [s for s in truth[family.stem_side] if len(candidates(family, s)) >= N_OPTIONS - 1]
        splits[family.name] = split_stems(stems, cfg, random.Random(f"{cfg.seed}:{family.name}:split"))
    # 2. one answer per test stem; the test facts of every family.
    answers: dict[tuple[str, str], str] = {}
    test_facts: set[tuple[str, str]] = set()
    heldout_facts: set[tuple[str, str]] = set()
    for family in families:
        for split in TEST_SPLITS:
            for stem in splits[family.name][split]:
                answer = rng.choice(sorted(truth[family.stem_side][stem]))
                answers[family.name, stem] = answer
                test_facts.add(_fact(family, stem, answer))
                if split == "test_heldout":
                    heldout_facts.add(_fact(family, stem, answer))
    # 3. the held-out edges: every support of a held-out fact (both families). A fact that is
    #    held out for one family and in-graph for the other is held out; the in-graph question
    #    then loses its support and is dropped below.
    facts = ent.pairs.set_index(["disease", "drug"])
    heldout = sorted(heldout_facts)
    removed_xy = facts.loc[heldout, ["x", "y"]].to_numpy(np.int64) if heldout else np.zeros((0, 2), np.int64)
    edge_key = lambda xy: np.sort(xy, axis=1)[:, 0] * (1 << 31) + np.sort(xy, axis=1)[:, 1]  # noqa: E731
    removed_keys = set(edge_key(removed_xy).tolist())
    supported_after = {f for f, kept in zip(
        zip(ent.pairs.disease, ent.pairs.drug, strict=True),
        [k not in removed_keys for k in edge_key(ent.pairs[["x", "y"]].to_numpy(np.int64)).tolist()],
        strict=True) if kept}
    dropped = Counter()
    for family in families:
        keep = []
        for stem in splits[family.name]["test_ingraph"]:
            if _fact(family, stem, answers[family.name, stem]) in supported_after:
                keep.append(stem)
            else:  # its edges went with a held-out fact: it is not "in the graph" any more
                dropped[family.name] += 1
        splits[family.name]["test_ingraph"] = keep
    # 4. training answers: never a test fact, and spread over the entities: each stem takes its
    #    true answer least often the answer so far (ties at random). A uniform choice would make
    #    entities with many facts (hypertension, prednisolone) the answer again and again, and
    #    "pick the most familiar option" a strong shortcut on the test questions.
    so_far: Counter = Counter()
    for family in families:
        keep = []
        for stem in splits[family.name]["train"]:
            allowed = sorted(a for a in truth[family.stem_side][stem] if _fact(family, stem, a) not in test_facts)
            if allowed:
                fewest = min(so_far[a] for a in allowed)
                answers[family.name, stem] = rng.choice([a for a in allowed if so_far[a] == fewest])
                so_far[answers[family.name, stem]] += 1
                keep.append(stem)
        splits[family.name]["train"] = keep
    # 5. answer frequency in training, then distractors and balanced letters.
    train_freq = Counter(answers[f.name, s] for f in families for s in splits[f.name]["train"])
    items = []
    for family in families:
        for split in ("train", *TEST_SPLITS):
            stems = splits[family.name][split]
            letter_rng = random.Random(f"{cfg.seed}:{family.name}:{split}:letters")
            slots = [i % N_OPTIONS for i in range(len(stems))]
            letter_rng.shuffle(slots)
            for stem, slot in zip(stems, slots, strict=True):
                answer = answers[family.name, stem]
                wrong = pick_distractors(candidates(family, stem), answer, ent.group, train_freq,
                                         cfg.distractor_pool, random.Random(f"{cfg.seed}:{family.name}:{stem}"))
                items.append(make_item(family, split, stem, answer, wrong, slot, ent, letter_rng))
    summary = summarize(items, splits, train_freq, ent, dropped, len(removed_keys), cfg)
    removed = pd.DataFrame({"src": removed_xy[:, 0], "dst": removed_xy[:, 1], "relation": RELATION}
                           ).drop_duplicates(ignore_index=True)
    return KGQADataset(items, removed, splits, summary)


def pick_distractors(candidates: list[str], answer: str, group: dict[str, str], freq: Counter,
                     pool: int, rng: random.Random) -> list[str]:
    """N_OPTIONS - 1 wrong options, drawn at random among the ``pool`` candidates that match the
    answer best: first on how often they are the answer in training (so "pick the option seen most
    as an answer" gains nothing), then on the answer's group (ATC anatomical group / ICD-10-CM
    chapter), ties at random."""
    others = [c for c in candidates if c != answer]
    jitter = {c: rng.random() for c in others}  # ties broken at random, not by name
    ranked = sorted(others, key=lambda c: (abs(freq[c] - freq[answer]), group[c] != group[answer], jitter[c]))
    return rng.sample(ranked[:max(pool, N_OPTIONS - 1)], N_OPTIONS - 1)


def make_item(family: Family, split: str, stem: str, answer: str, wrong: list[str], slot: int,
              ent: Entities, rng: random.Random) -> MCQItem:
    """The linked question: answer at letter ``slot``, the codes of stem and options as mentions."""
    order = list(wrong)
    rng.shuffle(order)
    order.insert(slot, answer)
    options = {LETTERS[i]: ent.name[e] for i, e in enumerate(order)}
    name = ent.name[stem]
    question = family.template.format(name=name)
    start = question.index(name)
    stem_kind, option_kind = ("disease", "drug") if family.stem_side == "disease" else ("drug", "disease")
    mentions = [Mention(name, start, start + len(name), "stem", [CodeRef(*ent.code[stem], 1.0)], stem_kind)]
    mentions += [Mention(options[LETTERS[i]], 0, len(options[LETTERS[i]]), f"option:{LETTERS[i]}",
                         [CodeRef(*ent.code[e], 1.0)], option_kind) for i, e in enumerate(order)]
    system, code = ent.code[stem]
    return MCQItem(f"kgqa-{family.name}-{system}-{code}", question, options, LETTERS[slot], SPLIT_TIERS[split],
                   mentions=mentions, subject=family.name)


# --------------------------------------------------------------------------------------- summary
def _answer_entity(item: MCQItem) -> str:
    return item.options[item.answer]


def popularity_accuracy(items: list[MCQItem], freq_by_text: Counter) -> float | None:
    """Expected accuracy of answering the option most often the answer in training (ties split evenly)."""
    if not items:
        return None
    total = 0.0
    for it in items:
        counts = {k: freq_by_text[v] for k, v in it.options.items()}
        best = max(counts.values())
        tied = [k for k, c in counts.items() if c == best]
        total += (it.answer in tied) / len(tied)
    return total / len(items)


def letter_shares(items: list[MCQItem]) -> dict[str, float]:
    counts = Counter(it.answer for it in items)
    return {k: round(counts[k] / len(items), 4) if items else 0.0 for k in LETTERS[:N_OPTIONS]}


def summarize(items: list[MCQItem], splits: dict, train_freq: Counter, ent: Entities, dropped: Counter,
              n_removed: int, cfg: KGQAConfig) -> dict:
    """Counts per family and split, answer letters, and the shortcut baselines on each test condition:
    the training majority letter and the most-frequent-answer-in-training (popularity) rule."""
    by = defaultdict(list)
    for it in items:
        by[it.subject, split_of(it)].append(it)
        by["all", split_of(it)].append(it)
    train = by["all", "train"]
    train_letters = Counter(it.answer for it in train)
    majority = min(train_letters, key=lambda k: (-train_letters[k], k)) if train else "A"
    freq_by_text = Counter(_answer_entity(it) for it in train)
    families = {}
    for family in [*cfg.families, "all"]:
        per = {}
        for split in ("train", *TEST_SPLITS):
            group = by[family, split]
            row = {"n": len(group), "answer_letters": letter_shares(group)}
            if split != "train":
                row["majority_letter"] = {"letter": majority, "accuracy": round(
                    sum(it.answer == majority for it in group) / len(group), 4) if group else None}
                pop = popularity_accuracy(group, freq_by_text)
                row["popularity"] = None if pop is None else round(pop, 4)
            per[split] = row
        families[family] = per
    return {"seed": cfg.seed, "relation": RELATION, "tiers": SPLIT_TIERS, "families": families,
            "facts": int(len(ent.pairs[["disease", "drug"]].drop_duplicates())),
            "heldout_edges": n_removed, "ingraph_dropped_by_removal": dict(dropped),
            "distinct_training_answers": len(train_freq),
            "distractors_in_answer_group": round(_group_match(items, ent), 4),
            "note": ("validation: the fine-tune's held-out slice of the training pool (tier Intermediate, "
                     "data.val_fraction); one question per stem, so it is a split by stem entity too")}


def _group_match(items: list[MCQItem], ent: Entities) -> float:
    """Share of distractors in the answer's ATC anatomical group / ICD-10-CM chapter."""
    same = total = 0
    group_of = {f"{ent.code[e][0]}:{ent.code[e][1]}": ent.group[e] for e in ent.group}
    for it in items:
        codes = {m.field[7:]: f"{m.codes[0].system}:{m.codes[0].code}" for m in it.mentions if m.field != "stem"}
        answer = group_of[codes[it.answer]]
        for letter, code in codes.items():
            if letter != it.answer:
                same += group_of[code] == answer
                total += 1
    return same / total if total else 0.0


def split_of(item: MCQItem) -> str:
    return {tier: split for split, tier in SPLIT_TIERS.items()}[item.tier]


# ---------------------------------------------------------------------------------------- output
QUESTIONS, HELDOUT, SUMMARY, SPLITS = "questions.jsonl", "heldout_edges.csv", "summary.json", "splits.json"


def load_graph(cfg: KGQAConfig, progress: bool = False):
    """The full graph (no edge held out) MedTok's data options of the same names would build, and its vocabulary."""
    from medtok_core.graph import KGConfig, build_knowledge_graph
    from medtok_core.vocab import VocabConfig, load_or_build_vocab

    vocab = load_or_build_vocab(VocabConfig(user_codes=cfg.user_codes))
    kg = build_knowledge_graph(vocab, KGConfig(data_dir=cfg.data_dir, kg_csv=cfg.kg_csv,
                                               skip_sources=list(cfg.skip_sources)), progress=progress)
    return kg, vocab


def write_dataset(ds: KGQADataset, kg, output: str | Path, config_writer=None) -> Path:
    """questions.jsonl, heldout_edges.csv (the format ``data.heldout_edges`` reads), splits.json and
    summary.json, all at once: the folder is replaced only when everything is written."""
    from commons.io import atomic_dir, write_json
    from disease_linking.questions import write_jsonl
    from medtok_core.heldout import write_heldout

    output = Path(output)
    with atomic_dir(output) as tmp:
        write_jsonl(tmp / QUESTIONS, ds.items)
        write_heldout(tmp / HELDOUT, kg, ds.removed)
        write_json(tmp / SPLITS, ds.splits)
        write_json(tmp / SUMMARY, ds.summary)
        if config_writer is not None:
            config_writer(tmp)
    return output
