"""Does MedTok carry more than its text? Held-out benchmark suite of code embeddings.

    python -m recipes.medtok_quality                                  # quick configuration (minutes)
    python -m recipes.medtok_quality --config configs/medtok_quality_full.yaml
    python -m recipes.medtok_quality --medtok_overrides model.dim=128,optim.epochs=4 --output runs/q2

One run, same codes, same split, side by side (method keys of ``results.json``):

- ``medtok``: MedTok (text + graph), the quantised token embeddings as exported;
- ``medtok_continuous``: the same model's four encoder outputs before quantisation;
- ``text_only`` / ``graph_only``: MedTok trained with the same config and ``model.modalities``
  text / graph;
- ``raw_text``: the frozen text encoder's description vector (the model's own input);
- ``random``: seeded Gaussian vectors (the floor).

Protocol: relation pairs between codes (:mod:`medtok_core.heldout`) are split by pair (seeded);
the KG edges that support the test pairs are written to ``heldout_edges.csv`` and removed from the
graph (``data.heldout_edges``) *before* any MedTok model is trained, so no method saw them.
Every task and its protocol is written out in ``report.md``; scores go to ``results.json``
(``{"tasks": {TASK: {"metric", "higher_is_better", "scores": {METHOD: value}}}, ...}``) and a
plot to ``results.png``. Artifacts are reused when their training config and held-out file are
unchanged (``--retrain true`` forces training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from commons.config import parse_config, save_config, to_dict
from commons.errors import ConfigError, UserError, cli_entry
from commons.io import read_json, write_json, write_text
from medtok_core import quality as Q

REPO = Path(__file__).resolve().parent.parent
TASK_PREFIXES = ("hierarchy", "gem", "heldout_")
CORE_METHODS = ("medtok", "medtok_continuous", "text_only", "graph_only", "raw_text", "random")
SINGLE_MODALITIES = ("text_only", "graph_only")
GEM_SHARE = 0.9  # GEM retrieval: MedTok must keep this share of the raw text vector's MRR
# Ablation, opt-in: each of the four exported parts of the fused tokens alone (which part carries
# which relation; what reading all four with one cosine or one probe loses).
# Named in the export's order (medtok_core.model.EMBEDDING_NAMES; not imported: it pulls in torch-geometric).
PART_METHODS = ("medtok_text_specific", "medtok_text_cross", "medtok_graph_cross", "medtok_graph_specific")
# Ablation, opt-in: the raw description vector reduced by PCA to one part's width (model.dim): how
# much of the description's geometry a part of that size can hold at best.
CAPACITY_METHODS = ("raw_text_pca",)
METHODS = CORE_METHODS + PART_METHODS + CAPACITY_METHODS
# Which trained MedTok variant (model.modalities) each method needs.
VARIANT_OF = {"medtok": "both", "medtok_continuous": "both", "text_only": "text", "graph_only": "graph",
              **{m: "both" for m in PART_METHODS}}


@dataclass
class QualityConfig:
    """Held-out benchmark of MedTok against text-only, graph-only, raw text and random vectors."""

    # MedTok training config (YAML, relative to the cwd or the repository) shared by every variant.
    medtok_config: str = "configs/medtok_quick.yaml"
    # Overrides of that config, key=value (comma-separated on the command line): model.dim=128;
    # a list value inside one override separates its items with ';' (data.link_relations=a;b).
    medtok_overrides: list[str] = field(default_factory=list)
    output: str = "runs/medtok_quality"
    # Methods compared (keys of results.json); the part ablations medtok_text_specific,
    # medtok_text_cross, medtok_graph_cross, medtok_graph_specific only when listed.
    methods: list[str] = field(default_factory=lambda: list(CORE_METHODS))
    # Held-out relations, relation:SYSTEM_A:SYSTEM_B (relation = KG relation between the nodes the
    # codes attach to). Queries of the MRR come from SYSTEM_A.
    relations: list[str] = field(default_factory=lambda: [
        "indication:ATC:ICD10CM", "indication:ATC:ICD9CM", "drug_drug:ATC:ATC", "disease_disease:ICD10CM:ICD10CM"])
    heldout_fraction: float = 0.15
    max_test_pairs: int = 1500
    # A relation with fewer test pairs is reported as skipped (too few for a stable score).
    min_test_pairs: int = 50
    max_train_pairs: int = 4000
    neg_per_pos: int = 5
    n_random_pairs: int = 20000
    max_parent_queries: int = 3000
    # Resamples of the paired bootstrap behind each target's 95% interval (queries, or positive and
    # negative pairs, drawn with replacement; the same draws for MedTok and the method it is held to).
    n_resamples: int = 1000
    seed: int = 0
    retrain: bool = False
    progress: bool = True
    # Also publish the run: results, report and plot to docs/results/medtok_quality_NAME/, and the
    # table between the <!-- medtok_quality:NAME --> markers of this page (docs/medtok_quality.md).
    page: str | None = None
    page_name: str = "quick"
    # Only publish the results already in --output (no training, no scoring).
    publish_only: bool = False


# ============================================================================== setup
def training_config(cfg: QualityConfig):
    """The MedTok TrainConfig from ``medtok_config`` + ``medtok_overrides`` (parsed like a CLI)."""
    from medtok_core.train import TrainConfig

    path = Path(cfg.medtok_config)
    if not path.is_file() and (REPO / path).is_file():
        path = REPO / path
    argv = ["--config", str(path)]
    for item in cfg.medtok_overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"medtok_overrides item {item!r} must look like key=value (e.g. model.dim=128)")
        argv.append(f"--{key.strip()}={value.strip().replace(';', ',')}")
    tcfg = parse_config(TrainConfig, argv, prog="medtok_overrides")
    tcfg.progress = cfg.progress
    return tcfg


def check(cfg: QualityConfig) -> None:
    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not set(cfg.methods) & set(VARIANT_OF):
        raise ConfigError("methods need at least one MedTok method (GEM codes resolve through its tokenizer)")
    if not 0 < cfg.heldout_fraction < 1:
        raise ConfigError("heldout_fraction must be in (0, 1)")
    if cfg.n_resamples < 100:
        raise ConfigError(f"n_resamples must be at least 100 for a 95% interval (got {cfg.n_resamples})")
    for spec in cfg.relations:
        if len(spec.split(":")) != 3:
            raise ConfigError(f"relation {spec!r} must look like relation:SYSTEM_A:SYSTEM_B")


@dataclass
class Relation:
    task: str          # heldout_<name>
    spec: str
    split: object      # medtok_core.heldout.PairSplit (code ids)
    symmetric: bool


def relation_task_name(spec: str, specs: list[str]) -> str:
    """heldout_indication_icd10cm etc.; the system suffix is dropped when the relation is unique."""
    rel, a, b = spec.split(":")
    base = rel.replace("-", "_").replace(" ", "_")
    same = [s for s in specs if s.split(":")[0] == rel]
    return f"heldout_{base}" if len(same) == 1 else f"heldout_{base}_{b.lower()}"


def make_splits(cfg: QualityConfig, kg, selected: pd.DataFrame) -> tuple[list[Relation], dict[str, str]]:
    """Code-level pairs of each relation on the full graph and their seeded held-out split."""
    from medtok_core.heldout import code_attachments, relation_pairs, split_pairs

    att = code_attachments(kg)
    out, skipped = [], {}
    for i, spec in enumerate(cfg.relations):
        rel, sys_a, sys_b = spec.split(":")
        ids = lambda s: selected.code_id[selected.system == s].to_numpy()  # noqa: E731
        pairs = relation_pairs(kg, rel, ids(sys_a), ids(sys_b), att)
        split = split_pairs(pairs, rel, cfg.heldout_fraction, cfg.max_test_pairs, cfg.seed + i)
        name = relation_task_name(spec, cfg.relations)
        if len(split.test) < cfg.min_test_pairs:
            skipped[name] = (f"{spec}: {len(split.all_pairs)} code pairs in the selection, {len(split.test)} "
                             f"test pairs < min_test_pairs={cfg.min_test_pairs}")
            continue
        out.append(Relation(name, spec, split, sys_a == sys_b))
    return out, skipped


# ============================================================================== embeddings
def _stamp(tcfg, heldout_sha: str) -> str:
    conf = {k: v for k, v in to_dict(tcfg).items() if k not in ("progress", "log_every")}
    return hashlib.sha256(json.dumps({"config": conf, "heldout": heldout_sha},
                                     sort_keys=True).encode()).hexdigest()


def variant_embeddings(tcfg, variant: str, data, out: Path, heldout_sha: str, retrain: bool) -> dict:
    """Train (or reuse) one MedTok variant; its exported and pre-quantisation embeddings."""
    from medtok_core.artifact import artifact_dir
    from medtok_core.tokenizer import MedTokTokenizer
    from medtok_core.train import encode_continuous, export_artifact, train

    cfg = dataclasses.replace(tcfg, model=dataclasses.replace(tcfg.model, modalities=variant),
                              output_dir=str(out / variant), resume=False)
    stamp = _stamp(cfg, heldout_sha)
    folder = out / variant
    stamp_file = folder / "stamp.json"
    info = {}
    if not retrain and stamp_file.is_file() and read_json(stamp_file).get("stamp") == stamp:
        tok = MedTokTokenizer.from_pretrained(artifact_dir(folder))
        model = tok.model()
        info = read_json(stamp_file).get("train", {})
    else:
        save_config(cfg, folder / "config.yaml")
        result = train(cfg, data)
        export_artifact(artifact_dir(folder), cfg, result.model, data)
        tok = MedTokTokenizer.from_pretrained(artifact_dir(folder))
        model = result.model
        info = {"train_s": round(result.seconds, 1), "steps": result.steps,
                "codes_per_s": round(result.codes_per_s, 1)}
        write_json(stamp_file, {"stamp": stamp, "train": info})
    return {"quantized": tok.embeddings, "continuous": encode_continuous(model, data), "tokenizer": tok,
            "train": info}


def all_embeddings(cfg: QualityConfig, tcfg, data, out: Path, heldout_sha: str) -> tuple[dict, dict, object]:
    """Method -> [n_codes, dim] table (rows = the training selection's order)."""
    variants = sorted({VARIANT_OF[m] for m in cfg.methods if m in VARIANT_OF}, key=["both", "text", "graph"].index)
    got, train_info = {}, {}
    for v in variants:
        t0 = time.perf_counter()
        got[v] = variant_embeddings(tcfg, v, data, out / "artifacts", heldout_sha, cfg.retrain)
        train_info[v] = {**got[v]["train"], "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"variant {v}: {train_info[v]}", flush=True)
    emb = {}
    for m in cfg.methods:
        if m == "medtok":
            emb[m] = got["both"]["quantized"]
        elif m == "medtok_continuous":
            emb[m] = got["both"]["continuous"]
        elif m == "text_only":
            emb[m] = got["text"]["quantized"]
        elif m == "graph_only":
            emb[m] = got["graph"]["quantized"]
        elif m == "raw_text":
            emb[m] = description_vectors(data)
        elif m == "raw_text_pca":
            emb[m] = principal_components(description_vectors(data), tcfg.model.dim)
        elif m in PART_METHODS:  # tcfg.model.dim columns each, in the export's order
            i, dim = PART_METHODS.index(m), tcfg.model.dim
            emb[m] = got["both"]["quantized"][:, i * dim:(i + 1) * dim]
        elif m == "random":
            g = torch.Generator().manual_seed(cfg.seed)
            emb[m] = torch.randn(len(data), 4 * tcfg.model.dim, generator=g)
    tok = got[variants[0]]["tokenizer"]
    return emb, train_info, tok


def description_vectors(data) -> torch.Tensor:
    """[n_codes, Dt]: the frozen text encoder's vector of each code's description (MedTok's input)."""
    return data.text_table[data.code_text[:, 0]].float()


def principal_components(x: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k]: the rows of ``x``, centred, projected on their k leading principal axes (exact:
    eigenvectors of the covariance, so the result does not depend on a random sketch)."""
    x = x - x.mean(0)
    xd = x.double()
    _, vecs = torch.linalg.eigh(xd.t() @ xd)  # ascending eigenvalues
    return x @ vecs[:, -k:].flip(1).to(x.dtype)


# ============================================================================== tasks
@dataclass
class Task:
    name: str
    metric: str
    protocol: str
    scores: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    observed: dict[str, Q.Observed] = field(default_factory=dict, repr=False)
    ci: dict[str, dict] = field(default_factory=dict)  # comparison -> paired bootstrap difference

    def add(self, method: str, obs: Q.Observed) -> None:
        self.observed[method] = obs
        self.scores[method] = obs.value


def part_norms(emb: torch.Tensor, systems: pd.Series) -> dict[str, list[float]]:
    """Per code system, the mean norm of each of the four exported parts (text-specific, text-cross,
    graph-cross, graph-specific): with ``model.part_gates``, the weight the gates give each part."""
    norms = emb.float().reshape(len(emb), 4, -1).norm(dim=-1)
    sys_ = systems.astype(str).to_numpy()
    return {s: [round(float(x), 3) for x in norms[torch.as_tensor(sys_ == s)].mean(0)] for s in sorted(set(sys_))}


def to_rows(pairs: np.ndarray, row_of: pd.Series) -> np.ndarray:
    """Vocabulary code ids -> rows of the embedding tables."""
    return row_of.reindex(np.asarray(pairs).reshape(-1)).to_numpy(dtype=np.int64).reshape(-1, 2)


def evaluate(cfg: QualityConfig, emb: dict, vocab: pd.DataFrame, tok, relations: list[Relation],
             row_of: pd.Series, data_dir: str | None) -> list[Task]:
    from tqdm.auto import tqdm

    gem = Q.gem_pairs(tok, data_dir)
    samples = []
    for r in relations:
        s = r.split
        split_rows = dataclasses.replace(s, train=to_rows(s.train, row_of), test=to_rows(s.test, row_of),
                                         all_pairs=to_rows(s.all_pairs, row_of))
        samples.append((r, Q.relation_sample(split_rows, r.task, r.symmetric, cfg.max_train_pairs,
                                             cfg.neg_per_pos, cfg.seed)))
    tasks = {
        "hierarchy_sibling_auc": Task("hierarchy_sibling_auc", "roc_auc", PROTOCOLS["hierarchy_sibling_auc"]),
        "hierarchy_parent_mrr": Task("hierarchy_parent_mrr", "mrr", PROTOCOLS["hierarchy_parent_mrr"]),
        "gem_icd9_icd10cm_mrr": Task("gem_icd9_icd10cm_mrr", "mrr", PROTOCOLS["gem_icd9_icd10cm_mrr"]),
    }
    for r, s in samples:
        for kind in ("auc_cosine", "mrr_cosine", "auc_probe", "mrr_probe"):
            metric = "roc_auc" if kind.startswith("auc") else "mrr"
            tasks[f"{r.task}_{kind}"] = Task(f"{r.task}_{kind}", metric, relation_protocol(r, s, kind))
    n_targets = int((vocab["system"] == "ICD10CM").sum())
    for m in tqdm(cfg.methods, desc="scoring", disable=not cfg.progress):
        e = emb[m]
        h = Q.hierarchy_observed(vocab, e, cfg.n_random_pairs, cfg.seed)
        tasks["hierarchy_sibling_auc"].add(m, h)
        tasks["hierarchy_sibling_auc"].n = {"sibling_pairs": len(h.pos), "random_pairs": len(h.neg)}
        p = Q.parent_observed(vocab, e, cfg.max_parent_queries, cfg.seed)
        tasks["hierarchy_parent_mrr"].add(m, p)
        tasks["hierarchy_parent_mrr"].n = {"queries": len(p.rr)}
        g = Q.equivalence_observed(vocab, e, gem)
        tasks["gem_icd9_icd10cm_mrr"].add(m, g)
        tasks["gem_icd9_icd10cm_mrr"].n = {"queries": len(g.rr), "targets": n_targets}
        for r, s in samples:
            for kind, o in Q.relation_observed(e, s, seed=cfg.seed).items():
                tasks[f"{r.task}_{kind}"].add(m, o)
                tasks[f"{r.task}_{kind}"].n = {"test_pairs": len(s.test_pos), "test_negatives": len(s.test_neg),
                                               "train_pairs": len(s.train_pos), "train_negatives": len(s.train_neg)}
    for t in tasks.values():
        t.ci = target_intervals(t, cfg.n_resamples, cfg.seed)
    return list(tasks.values())


def raw_text_target(task: str) -> tuple[str, str, float]:
    """(target key, comparison label, scale of raw_text) of ``task``'s target against the raw text
    vector: above it on hierarchy and held-out relations; GEM: at least GEM_SHARE of it."""
    if task.startswith("gem"):
        return f"ge_{GEM_SHARE}_raw_text", f"{GEM_SHARE} x raw_text", GEM_SHARE
    return "gt_raw_text", "raw_text", 1.0


def target_comparisons(task: str, methods) -> dict[str, tuple[str, float]]:
    """Comparison label -> (other method, its scale) of the issue-9 targets of ``task``: MedTok
    against each single-modality model and the raw text vector (:func:`raw_text_target`)."""
    out = {m: (m, 1.0) for m in SINGLE_MODALITIES if m in methods}
    if "raw_text" in methods:
        _, label, scale = raw_text_target(task)
        out[label] = ("raw_text", scale)
    return out if "medtok" in methods else {}


def target_intervals(t: Task, n_resamples: int, seed: int) -> dict[str, dict]:
    """MedTok minus each comparison of :func:`target_comparisons`, with a paired bootstrap 95% interval."""
    return {label: Q.paired_difference(t.observed["medtok"], t.observed[other], scale_b=scale,
                                       n_resamples=n_resamples, seed=seed)
            for label, (other, scale) in target_comparisons(t.name, t.observed).items()}


PROTOCOLS = {
    "hierarchy_sibling_auc": "ROC-AUC of the cosine similarity separating sibling pairs (two codes with the same "
                             "parent, up to 10 per parent) from random pairs of codes of the same system.",
    "hierarchy_parent_mrr": "For each code whose parent is in the table (up to max_parent_queries, seeded), the "
                            "rank of the parent among all codes of the same system by cosine (the code itself "
                            "excluded, ties count half); mean reciprocal rank.",
    "gem_icd9_icd10cm_mrr": "For each ICD-9-CM code with a CMS GEM partner (both sides mapped to the table with the "
                            "tokenizer's ancestor fallback), the rank of its best-ranked ICD-10-CM partner among "
                            "all ICD-10-CM codes of the table by cosine; MRR. The GEM edges are in the graph "
                            "MedTok trains on (not held out): this task measures what survives, not inference.",
}


def relation_protocol(r: Relation, s, kind: str) -> str:
    rel, a, b = r.spec.split(":")
    base = (f"Code pairs {a} - {b} whose attached KG nodes are joined by a `{rel}` edge. "
            f"{len(r.split.test)} pairs were held out (seeded, by pair) and every KG edge supporting them "
            f"was removed before training ({len(r.split.removed)} edges; {r.split.collateral} other pairs lost "
            f"their support as a side effect and are neither train nor test pairs).")
    scorer = ("zero-shot cosine of the two embeddings" if kind.endswith("cosine") else
              "a logistic-regression probe on [cos(a,b), a*b, a, b] (unit-normalised embeddings, "
              f"block-scaled features, C=1) trained on {len(s.train_pos)} training pairs and as many sampled negatives only")
    if kind.startswith("auc"):
        what = (f"ROC-AUC of {scorer}, held-out pairs vs {len(s.test_neg)} sampled negatives drawn from the same "
                "two code sets (no true pair of the full graph, disjoint from the probe's negatives)")
    else:
        what = (f"MRR by {scorer}: for each {a} query of a held-out pair, the rank of its best held-out partner "
                f"among all {len(s.cand_b)} {b} codes of the relation, other known true pairs filtered out, ties "
                "half")
    return f"{base} {what}."


# ============================================================================== outputs
def results_json(tasks: list[Task], meta: dict) -> dict:
    return {"tasks": {t.name: {"metric": t.metric, "higher_is_better": True, "scores": t.scores, "n": t.n,
                               **({"ci": t.ci} if t.ci else {})}
                      for t in tasks}, **meta}


def validate_results(results: dict) -> dict:
    """Check the results.json schema that other tools rely on; raises UserError naming the fault."""
    tasks = results.get("tasks") if isinstance(results, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise UserError("results: 'tasks' must be a non-empty mapping of task name -> entry")
    for name, t in tasks.items():
        if not name.startswith(TASK_PREFIXES):
            raise UserError(f"results: task {name!r} must start with one of {', '.join(TASK_PREFIXES)}")
        if not isinstance(t, dict) or not isinstance(t.get("metric"), str) or t.get("higher_is_better") is not True:
            raise UserError(f"results: task {name!r} needs a metric name and higher_is_better: true")
        scores = t.get("scores")
        if not isinstance(scores, dict) or not scores:
            raise UserError(f"results: task {name!r} needs a non-empty scores mapping")
        for m, v in scores.items():
            if m not in METHODS:
                raise UserError(f"results: task {name!r} has unknown method {m!r}")
            if not isinstance(v, (int, float)):
                raise UserError(f"results: task {name!r} score of {m} is not a number")
        for label, d in t.get("ci", {}).items():
            if not isinstance(d, dict) or not all(isinstance(d.get(k), (int, float)) for k in ("difference", "low", "high")):
                raise UserError(f"results: task {name!r} interval {label!r} needs numbers difference, low, high")
    return results


def targets(results: dict) -> dict[str, dict[str, bool]]:
    """The issue's targets per task: MedTok >= best single modality; > raw text on hierarchy and
    held-out relations; GEM >= 0.9 x raw text."""
    out = {}
    for name, t in results["tasks"].items():
        s = t["scores"]
        if "medtok" not in s:
            continue
        row = {}
        single = [s[k] for k in SINGLE_MODALITIES if k in s]
        if single:
            row["ge_best_single_modality"] = s["medtok"] >= max(single)
        if "raw_text" in s:
            key, _, scale = raw_text_target(name)
            row[key] = s["medtok"] >= scale * s["raw_text"] if name.startswith("gem") else s["medtok"] > s["raw_text"]
        out[name] = row
    return out


def _present(results: dict, candidates: tuple[str, ...]) -> list[str]:
    return [m for m in candidates if any(m in t["scores"] for t in results["tasks"].values())]


def markdown_table(results: dict, methods: list[str] | None = None) -> str:
    """Tasks x methods, the best of each row in bold (default: the core methods of the run)."""
    methods = methods if methods is not None else _present(results, CORE_METHODS)
    lines = ["| task | metric | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, t in results["tasks"].items():
        vals = [t["scores"].get(m) for m in methods]
        best = max(v for v in vals if v is not None)
        cells = [("-" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}")) for v in vals]
        lines.append(f"| {name} | {t['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(results: dict) -> str:
    """Each target comparison of MedTok: the difference with its paired bootstrap 95% interval, and
    whether the target (on the point estimates) is met ("" when the run kept no intervals)."""
    rows = []
    for name, t in results["tasks"].items():
        met = results["targets"].get(name, {})
        for label, d in t.get("ci", {}).items():
            if label in SINGLE_MODALITIES and not _is_best_single(t["scores"], label):
                continue  # the target holds MedTok to the better single modality only
            ok = met.get("ge_best_single_modality" if label in SINGLE_MODALITIES else raw_text_target(name)[0])
            sure = "above" if d["low"] > 0 else "below" if d["high"] < 0 else "within the noise"
            rows.append(f"| {name} | medtok - {label} | {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] "
                        f"| {sure} | {'yes' if ok else '**no**'} |")
    if not rows:
        return ""
    return ("| task | difference | value [95% CI] | interval vs 0 | target met |\n|---|---|---|---|---|\n"
            + "\n".join(rows))


def _is_best_single(scores: dict, method: str) -> bool:
    single = {m: scores[m] for m in SINGLE_MODALITIES if m in scores}
    return max(single, key=single.get) == method


def parts_table(results: dict) -> str:
    """The part and capacity ablations beside the fused tokens and the single-modality models ("" when
    neither was run)."""
    parts = _present(results, PART_METHODS)
    if not parts and not _present(results, CAPACITY_METHODS):
        return ""
    methods = (_present(results, ("medtok",)) + parts
               + _present(results, (*SINGLE_MODALITIES, "raw_text", *CAPACITY_METHODS)))
    return ("Ablation: each of the four exported parts of the fused tokens alone (`medtok` is all four "
            "concatenated):\n\n" + markdown_table(results, methods))


def report_md(results: dict, tasks: list[Task], skipped: dict[str, str]) -> str:
    tg = results["targets"]
    met = sum(all(v.values()) for v in tg.values())
    parts = ["# MedTok quality: held-out benchmark", "",
             f"MedTok config: `{results['medtok_config']}` {results['medtok_overrides'] or ''}; "
             f"{results['n_codes']} codes ({', '.join(f'{k} {v}' for k, v in results['systems'].items())}); "
             f"seed {results['seed']}. Higher is better everywhere; best per task in bold.", "",
             markdown_table(results), "", *([parts_table(results), ""] if parts_table(results) else []),
             f"Targets (issue 9) met on {met} of {len(tg)} tasks:", ""]
    for name, row in tg.items():
        parts.append(f"- {name}: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in row.items()))
    if targets_table(results):
        parts += ["", "MedTok minus the method each target holds it to (the better single modality, the raw "
                  "text vector; GEM: 0.9 x raw text), with a paired bootstrap 95% interval (queries, or "
                  f"positive and negative pairs, resampled {results.get('n_resamples', '')} times, the same "
                  "draws for both methods). Seed-to-seed spread of training is not in it.", "",
                  targets_table(results)]
    parts += ["", "## Methods", "",
              "- `medtok`: MedTok (text + graph), the quantised token embeddings exactly as exported "
              "(token_table `embeddings`, the four weighted codebook sums concatenated);",
              "- `medtok_continuous`: the same model's four encoder outputs before quantisation (unit-normalised);",
              "- `text_only` / `graph_only`: MedTok trained with the same config, `model.modalities` text / graph;",
              "- `raw_text`: the frozen text encoder's vector of the code description (MedTok's own input);",
              "- `random`: seeded Gaussian vectors of MedTok's width (the floor).",
              *(["- `medtok_<part>` (ablation): one of the four parts of `medtok` alone (text-specific, "
                 "text-cross, graph-cross, graph-specific quantised sums)."]
                if _present(results, PART_METHODS) else []),
              *(["- `raw_text_pca` (ablation): `raw_text` centred and projected on its `model.dim` leading "
                 "principal axes: the most of the description's geometry one part of that width can hold."]
                if _present(results, CAPACITY_METHODS) else []), "",
              "## Tasks and protocols", ""]
    for t in tasks:
        parts.append(f"- **{t.name}** ({t.metric}; n = {t.n}): {t.protocol}")
    for name, why in skipped.items():
        parts.append(f"- {name}: skipped ({why}).")
    if results.get("part_norms"):
        parts += ["", "Mean norm of each exported part per code system (text-specific / text-cross / graph-cross / "
                  "graph-specific; with part gates, the weight each part gets):", ""]
        parts += [f"- {s}: {' / '.join(f'{x:.2f}' for x in v)}" for s, v in results["part_norms"].items()]
    parts += ["", "## Training", "", "```", json.dumps(results["training"], indent=2), "```", "",
              "![scores](results.png)", ""]
    return "\n".join(parts)


def page_block(results: dict, name: str, folder: str) -> str:
    tg = results["targets"]
    met = sum(all(v.values()) for v in tg.values())
    train = results["training"]
    secs = sum(v.get("train_s", 0) for v in train.values() if isinstance(v, dict))
    overrides = f" with `{', '.join(results['medtok_overrides'])}`" if results.get("medtok_overrides") else ""
    return (f"Generated by `python -m recipes.medtok_quality` from [`{folder}/results.json`]({folder}/results.json) "
            f"([report with every protocol]({folder}/report.md)); MedTok config `{results['medtok_config']}`"
            f"{overrides}, {results['n_codes']} codes, training of the three MedTok variants {secs:.0f} s on the "
            f"shared 2-core machine. Issue-9 targets met on {met} of {len(tg)} tasks.\n\n"
            f"{markdown_table(results)}\n\n"
            + (f"MedTok minus the method each target holds it to, paired bootstrap 95% interval over "
               f"queries / pairs (one training seed):\n\n{targets_table(results)}\n\n" if targets_table(results) else "")
            + (f"{parts_table(results)}\n\n" if parts_table(results) else "")
            + f"![MedTok quality, {name}]({folder}/results.png)")


def publish(out: Path, page: Path, name: str) -> Path:
    """Copy results.json, report.md and the plot to docs/results/medtok_quality_NAME/ and regenerate
    the ``<!-- medtok_quality:NAME -->`` block of ``page`` from that results.json."""
    import shutil

    from commons.io import docs_root, page_link, replace_marked_block

    results = validate_results(read_json(out / "results.json"))
    dest = docs_root(page) / "docs" / "results" / f"medtok_quality_{name}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("report.md", "results.png"):
        if (out / f).is_file() and (out / f).resolve() != (dest / f).resolve():  # republishing: in place
            shutil.copyfile(out / f, dest / f)
    write_json(dest / "results.json", results)
    replace_marked_block(page, f"medtok_quality:{name}", page_block(results, name, page_link(page, dest)))
    return dest


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["tasks"])
    methods = _present(results, CORE_METHODS)  # the part ablations are in the report's second table
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(names) + 2), 4.5))
    width = 0.8 / len(methods)
    x = np.arange(len(names))
    for i, m in enumerate(methods):
        vals = [results["tasks"][n]["scores"].get(m, np.nan) for n in names]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("score (higher is better)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach 1.0
    ax.set_title("MedTok vs single modalities, raw text and random vectors")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ============================================================================== main
def run(cfg: QualityConfig) -> dict:
    from commons.io import sha256_file
    from medtok_core.graph import KGConfig, build_knowledge_graph
    from medtok_core.heldout import write_heldout
    from medtok_core.train import prepare_data, select_codes
    from medtok_core.vocab import VocabConfig, load_or_build_vocab

    check(cfg)
    tcfg = training_config(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    vocab = load_or_build_vocab(VocabConfig(user_codes=tcfg.data.user_codes))
    kg_cfg = KGConfig(data_dir=tcfg.data.data_dir, kg_csv=tcfg.data.kg_csv, skip_sources=list(tcfg.data.skip_sources))
    kg = build_knowledge_graph(vocab, kg_cfg, progress=cfg.progress)
    selected = select_codes(vocab.table, tcfg.data)
    relations, skipped = make_splits(cfg, kg, selected)
    removed = pd.concat([r.split.removed for r in relations], ignore_index=True) if relations else \
        pd.DataFrame({"src": [], "dst": [], "relation": []})
    heldout = write_heldout(out / "heldout_edges.csv", kg, removed)
    del kg
    tcfg.data.heldout_edges = str(heldout.resolve())
    data = prepare_data(tcfg.data, progress=cfg.progress)
    prep_s = time.perf_counter() - t0
    emb, train_info, tok = all_embeddings(cfg, tcfg, data, out, sha256_file(heldout))
    row_of = pd.Series(np.arange(len(selected)), index=selected.code_id.to_numpy())
    t1 = time.perf_counter()
    tasks = evaluate(cfg, emb, data.vocab, tok, relations, row_of, tcfg.data.data_dir)
    meta = {"medtok_config": cfg.medtok_config, "medtok_overrides": list(cfg.medtok_overrides), "seed": cfg.seed,
            "n_codes": len(data), "systems": data.vocab["system"].value_counts().sort_index().to_dict(),
            "heldout_edges": len(removed), "skipped": skipped, "n_resamples": cfg.n_resamples,
            "training": {"prepare_s": round(prep_s, 1), **train_info},
            "eval_s": round(time.perf_counter() - t1, 1),
            **({"part_norms": part_norms(emb["medtok"], data.vocab["system"])} if "medtok" in emb else {})}
    results = results_json(tasks, meta)
    results["targets"] = targets(validate_results(results))
    from eval.provenance import provenance

    results["provenance"] = provenance([cfg.seed])  # commit, dirty flag, machine, seeds, command
    write_json(out / "results.json", results)
    plot(results, out / "results.png")
    write_text(out / "report.md", report_md(results, tasks, skipped))
    if cfg.page:
        publish(out, Path(cfg.page), cfg.page_name)
    print(markdown_table(results))
    print(f"results: {out / 'results.json'}, report: {out / 'report.md'}")
    return results


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(QualityConfig, argv, prog="python -m recipes.medtok_quality")
    if cfg.publish_only:
        if not cfg.page:
            raise ConfigError("--publish_only needs --page docs/medtok_quality.md")
        if not (Path(cfg.output) / "results.json").is_file():
            raise ConfigError(f"{cfg.output} holds no results.json; run python -m recipes.medtok_quality first")
        print(f"published to {publish(Path(cfg.output), Path(cfg.page), cfg.page_name)}")
        return
    run(cfg)


if __name__ == "__main__":
    main()
