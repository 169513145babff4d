"""Does MedTok carry more than its text? Held-out benchmark suite of code embeddings.

    python -m recipes.medtok_quality                                  # quick configuration (minutes)
    python -m recipes.medtok_quality --config configs/medtok_quality_full.yaml
    python -m recipes.medtok_quality --medtok_overrides model.dim=128,optim.epochs=4 --output runs/q2
    python -m recipes.medtok_quality --split test --train_seeds 0,1,2 --output runs/medtok_quality_test  # release

One run, same codes, same split, side by side (method keys of ``results.json``):

- ``medtok``: MedTok (text + graph), the quantised token embeddings as exported;
- ``medtok_continuous``: the same model's four encoder outputs before quantisation;
- ``text_only`` / ``graph_only``: MedTok trained with the same config and ``model.modalities``
  text / graph;
- ``raw_text``: the frozen text encoder's description vector (the model's own input);
- ``random``: seeded Gaussian vectors (the floor).

Protocol: relation pairs between codes (:mod:`medtok_core.heldout`) are split by pair (seeded by
``--seed``) into two disjoint held-out parts, *validation* and *test*; the KG edges that support
either part are written to ``heldout_edges.csv`` and removed from the graph (``data.heldout_edges``)
*before* any MedTok model is trained, so no method saw them and the same trained models serve both
parts. ``--split`` picks the part scored: ``validation`` (the default) for every configuration
choice, ``test`` once per released configuration (what the docs publish). Each MedTok variant
trains once per ``--train_seeds`` seed on the same split; scores are the mean over seeds and
the intervals resample the pairs and the seeds together.
The held-out pairs of both parts are listed in ``heldout_pairs.csv``. Every task and its protocol is
written out in ``report.md``; scores go to ``results.json``
(``{"tasks": {TASK: {"metric", "higher_is_better", "scores": {METHOD: mean}, "per_seed": {METHOD:
[value per training seed]}}}, "split", "train_seeds", ...}``) and a plot to ``results.png``.
Artifacts (one folder per variant and seed) are reused when their training config and held-out
file are unchanged, and a training killed midway resumes from its checkpoint (``--retrain true``
forces training).
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
from commons.io import atomic_path, read_json, write_json, write_text
from medtok_core import quality as Q

REPO = Path(__file__).resolve().parent.parent
HELDOUT_PARTS = ("validation", "test")  # medtok_core.heldout's (not imported at module level: keeps --help light)
TASK_PREFIXES = ("hierarchy", "gem", "heldout_")
CORE_METHODS = ("medtok", "medtok_continuous", "text_only", "graph_only", "raw_text", "random")
SINGLE_MODALITIES = ("text_only", "graph_only")
RELATION_KINDS = ("auc_cosine", "mrr_cosine", "auc_probe", "mrr_probe")
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
    # Share of a relation's code pairs in each of the two held-out parts (validation and test; the
    # support of both is removed from the graph), at most max_test_pairs pairs per part.
    heldout_fraction: float = 0.15
    max_test_pairs: int = 1500
    # A relation whose scored part has fewer pairs is reported as skipped (too few for a stable score).
    min_test_pairs: int = 50
    # The held-out part scored: validation (every configuration choice) or test (once per released
    # configuration; what the docs publish).
    split: str = "validation"
    # MedTok training seeds: each variant trains once per seed on the same split (the split's own
    # seed is --seed); scores are the mean over seeds, intervals span them. Releases use >= 3.
    train_seeds: list[int] = field(default_factory=lambda: [0])
    max_train_pairs: int = 4000
    neg_per_pos: int = 5
    n_random_pairs: int = 20000
    max_parent_queries: int = 3000
    # Resamples of the paired bootstrap behind each target's 95% interval (queries, or positive and
    # negative pairs, drawn with replacement; the same draws for MedTok and the method it is held to).
    n_resamples: int = 1000
    # Seed of the held-out split, the sampled pairs, the random vectors and the bootstrap (not of training).
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
    if not 0 < cfg.heldout_fraction < 0.5:
        raise ConfigError(f"heldout_fraction must be in (0, 0.5): it is the share of each of the two held-out "
                          f"parts (got {cfg.heldout_fraction})")
    if cfg.split not in HELDOUT_PARTS:
        raise ConfigError(f"split must be one of {', '.join(HELDOUT_PARTS)} (got {cfg.split!r}): validation for "
                          "every configuration choice, test once per released configuration")
    if not cfg.train_seeds or len(set(cfg.train_seeds)) != len(cfg.train_seeds) or min(cfg.train_seeds) < 0:
        raise ConfigError(f"train_seeds must be distinct non-negative integers, e.g. 0,1,2 (got {cfg.train_seeds})")
    if cfg.n_resamples < 100:
        raise ConfigError(f"n_resamples must be at least 100 for a 95% interval (got {cfg.n_resamples})")
    for spec in cfg.relations:
        if len(spec.split(":")) != 3:
            raise ConfigError(f"relation {spec!r} must look like relation:SYSTEM_A:SYSTEM_B")


@dataclass
class Relation:
    task: str          # heldout_<name>
    spec: str
    split: object      # medtok_core.heldout.PairSplit (code ids), both held-out parts
    symmetric: bool
    part: str = "validation"  # the held-out part this run scores

    @property
    def scored(self):
        """The split as this run scores it: its ``test`` is the scored part."""
        return self.split.part(self.part)


def relation_task_name(spec: str, specs: list[str]) -> str:
    """heldout_indication_icd10cm etc.; the system suffix is dropped when the relation is unique."""
    rel, a, b = spec.split(":")
    base = rel.replace("-", "_").replace(" ", "_")
    same = [s for s in specs if s.split(":")[0] == rel]
    return f"heldout_{base}" if len(same) == 1 else f"heldout_{base}_{b.lower()}"


def make_splits(cfg: QualityConfig, kg, selected: pd.DataFrame) -> tuple[list[Relation], dict[str, str]]:
    """Code-level pairs of each relation on the full graph and their seeded split into training
    pairs and the validation and test parts (the support of both parts is removed)."""
    from medtok_core.heldout import code_attachments, relation_pairs, split_pairs

    att = code_attachments(kg)
    out, skipped = [], {}
    for i, spec in enumerate(cfg.relations):
        rel, sys_a, sys_b = spec.split(":")
        ids = lambda s: selected.code_id[selected.system == s].to_numpy()  # noqa: E731
        pairs = relation_pairs(kg, rel, ids(sys_a), ids(sys_b), att)
        split = split_pairs(pairs, rel, cfg.heldout_fraction, cfg.max_test_pairs, cfg.seed + i, validation=True)
        name = relation_task_name(spec, cfg.relations)
        # Both parts have the same size, so a relation is skipped (and its edges stay) for both splits
        # alike: the held-out file, hence every trained model, does not depend on --split.
        if len(split.test) < cfg.min_test_pairs:
            skipped[name] = (f"{spec}: {len(split.all_pairs)} code pairs in the selection, {len(split.test)} "
                             f"pairs per held-out part < min_test_pairs={cfg.min_test_pairs}")
            continue
        out.append(Relation(name, spec, split, sys_a == sys_b, cfg.split))
    return out, skipped


def heldout_pairs_table(relations: list[Relation], table: pd.DataFrame) -> pd.DataFrame:
    """Every held-out code pair with its part (validation / test), by system and code: what
    ``heldout_pairs.csv`` lists, so anyone can check which pairs each split scored."""
    by_id = table.set_index("code_id")
    rows = []
    for r in relations:
        for part in HELDOUT_PARTS:
            pairs = r.split.part(part).test
            a, b = by_id.loc[pairs[:, 0]], by_id.loc[pairs[:, 1]]
            rows.append(pd.DataFrame({"task": r.task, "part": part, "system_a": a.system.to_numpy(),
                                      "code_a": a.code.to_numpy(), "system_b": b.system.to_numpy(),
                                      "code_b": b.code.to_numpy()}))
    cols = ["task", "part", "system_a", "code_a", "system_b", "code_b"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)


# ============================================================================== embeddings
def _stamp(tcfg, heldout_sha: str) -> str:
    conf = {k: v for k, v in to_dict(tcfg).items() if k not in ("progress", "log_every")}
    return hashlib.sha256(json.dumps({"config": conf, "heldout": heldout_sha},
                                     sort_keys=True).encode()).hexdigest()


def artifact_folder(out: Path, variant: str, train_seed: int) -> Path:
    """Where the MedTok ``variant`` trained with ``train_seed`` lives (one folder per variant and seed)."""
    return out / f"{variant}-seed{train_seed}"


def variant_embeddings(tcfg, variant: str, data, out: Path, heldout_sha: str, retrain: bool,
                       train_seed: int = 0) -> dict:
    """Train (or reuse) one MedTok variant with one training seed; its exported and pre-quantisation
    embeddings. A finished training is known by its stamp (config, seed and held-out file); one that
    was killed midway resumes from its checkpoint when its stamp is the same."""
    import shutil

    from medtok_core.artifact import artifact_dir
    from medtok_core.tokenizer import MedTokTokenizer
    from medtok_core.train import encode_continuous, export_artifact, train

    folder = artifact_folder(out, variant, train_seed)
    cfg = dataclasses.replace(tcfg, model=dataclasses.replace(tcfg.model, modalities=variant),
                              seed=train_seed, output_dir=str(folder), resume=False)
    stamp = _stamp(cfg, heldout_sha)
    stamp_file, started_file = folder / "stamp.json", folder / "started.json"
    info = {}
    if not retrain and stamp_file.is_file() and read_json(stamp_file).get("stamp") == stamp:
        tok = MedTokTokenizer.from_pretrained(artifact_dir(folder))
        model = tok.model()
        info = read_json(stamp_file).get("train", {})
    else:
        # Resume only the same training (its stamp written when it started); anything else in the
        # folder is another run's and goes.
        same = not retrain and started_file.is_file() and read_json(started_file).get("stamp") == stamp
        if not same:
            shutil.rmtree(folder, ignore_errors=True)
        cfg = dataclasses.replace(cfg, resume=same)
        save_config(cfg, folder / "config.yaml")
        write_json(started_file, {"stamp": stamp})
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
    """Method -> list of [n_codes, dim] tables (rows = the training selection's order): one per
    training seed for the trained MedTok methods, one for the others (they do not train)."""
    variants = sorted({VARIANT_OF[m] for m in cfg.methods if m in VARIANT_OF}, key=["both", "text", "graph"].index)
    got, train_info = {}, {}
    for v in variants:
        for s in cfg.train_seeds:
            t0 = time.perf_counter()
            got[v, s] = variant_embeddings(tcfg, v, data, out / "artifacts", heldout_sha, cfg.retrain, s)
            key = v if len(cfg.train_seeds) == 1 else f"{v}-seed{s}"  # one seed: today's keys
            train_info[key] = {**got[v, s]["train"], "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"variant {v}, training seed {s}: {train_info[key]}", flush=True)
    per_seed = lambda v, part: [got[v, s][part] for s in cfg.train_seeds]  # noqa: E731
    emb = {}
    for m in cfg.methods:
        if m == "medtok":
            emb[m] = per_seed("both", "quantized")
        elif m == "medtok_continuous":
            emb[m] = per_seed("both", "continuous")
        elif m == "text_only":
            emb[m] = per_seed("text", "quantized")
        elif m == "graph_only":
            emb[m] = per_seed("graph", "quantized")
        elif m == "raw_text":
            emb[m] = [description_vectors(data)]
        elif m == "raw_text_pca":
            emb[m] = [principal_components(description_vectors(data), tcfg.model.dim)]
        elif m in PART_METHODS:  # tcfg.model.dim columns each, in the export's order
            i, dim = PART_METHODS.index(m), tcfg.model.dim
            emb[m] = [e[:, i * dim:(i + 1) * dim] for e in per_seed("both", "quantized")]
        elif m == "random":
            g = torch.Generator().manual_seed(cfg.seed)
            emb[m] = [torch.randn(len(data), 4 * tcfg.model.dim, generator=g)]
    tok = got[variants[0], cfg.train_seeds[0]]["tokenizer"]
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
    scores: dict[str, float] = field(default_factory=dict)  # method -> mean over its training seeds
    n: dict[str, int] = field(default_factory=dict)
    # method -> one Observed per training seed (one for a method that does not train)
    observed: dict[str, list[Q.Observed]] = field(default_factory=dict, repr=False)
    per_seed: dict[str, list[float]] = field(default_factory=dict)  # trained methods: value per seed
    ci: dict[str, dict] = field(default_factory=dict)  # comparison -> paired bootstrap difference

    def add(self, method: str, obs: list[Q.Observed]) -> None:
        self.observed[method] = obs
        values = [o.value for o in obs]
        self.scores[method] = float(np.mean(values))
        if method in VARIANT_OF:
            self.per_seed[method] = values


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
        s = r.scored  # its test pairs are the part this run scores
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
        for kind in RELATION_KINDS:
            metric = "roc_auc" if kind.startswith("auc") else "mrr"
            tasks[f"{r.task}_{kind}"] = Task(f"{r.task}_{kind}", metric, relation_protocol(r, s, kind))
    n_targets = int((vocab["system"] == "ICD10CM").sum())
    for m in tqdm(cfg.methods, desc="scoring", disable=not cfg.progress):
        got: dict[str, list[Q.Observed]] = {}
        for e in emb[m]:  # one table per training seed
            got.setdefault("hierarchy_sibling_auc", []).append(
                Q.hierarchy_observed(vocab, e, cfg.n_random_pairs, cfg.seed))
            got.setdefault("hierarchy_parent_mrr", []).append(Q.parent_observed(vocab, e, cfg.max_parent_queries, cfg.seed))
            got.setdefault("gem_icd9_icd10cm_mrr", []).append(Q.equivalence_observed(vocab, e, gem))
            for r, s in samples:
                for kind, o in Q.relation_observed(e, s, seed=cfg.seed).items():
                    got.setdefault(f"{r.task}_{kind}", []).append(o)
        for name, obs in got.items():
            tasks[name].add(m, obs)
        h, p, g = got["hierarchy_sibling_auc"][0], got["hierarchy_parent_mrr"][0], got["gem_icd9_icd10cm_mrr"][0]
        tasks["hierarchy_sibling_auc"].n = {"sibling_pairs": len(h.pos), "random_pairs": len(h.neg)}
        tasks["hierarchy_parent_mrr"].n = {"queries": len(p.rr)}
        tasks["gem_icd9_icd10cm_mrr"].n = {"queries": len(g.rr), "targets": n_targets}
        for r, s in samples:
            for kind in RELATION_KINDS:
                tasks[f"{r.task}_{kind}"].n = {
                    "scored_pairs": len(s.test_pos), "scored_negatives": len(s.test_neg),
                    "validation_pairs": len(r.split.validation), "test_pairs": len(r.split.test),
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
    """MedTok minus each comparison of :func:`target_comparisons` (means over training seeds), with a
    paired bootstrap 95% interval over the pairs / queries and the training seeds together."""
    return {label: Q.seeded_paired_difference(t.observed["medtok"], t.observed[other], scale_b=scale,
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
            f"Two disjoint parts were held out (seeded, by pair), {len(r.split.validation)} validation and "
            f"{len(r.split.test)} test pairs, and every KG edge supporting either part was removed before "
            f"training ({len(r.split.removed)} edges; {r.split.collateral} other pairs lost their support as a "
            f"side effect and are neither training nor held-out pairs); this run scores the {r.part} part.")
    scorer = ("zero-shot cosine of the two embeddings" if kind.endswith("cosine") else
              "a logistic-regression probe on [cos(a,b), a*b, a, b] (unit-normalised embeddings, "
              f"block-scaled features, C=1) trained on {len(s.train_pos)} training pairs and as many sampled negatives only")
    if kind.startswith("auc"):
        what = (f"ROC-AUC of {scorer}, the {r.part} pairs vs {len(s.test_neg)} sampled negatives drawn from the same "
                "two code sets (no true pair of the full graph, disjoint from the probe's negatives)")
    else:
        what = (f"MRR by {scorer}: for each {a} query of a {r.part} pair, the rank of its best {r.part} partner "
                f"among all {len(s.cand_b)} {b} codes of the relation, other known true pairs filtered out, ties "
                "half")
    return f"{base} {what}."


# ============================================================================== outputs
def results_json(tasks: list[Task], meta: dict) -> dict:
    return {"tasks": {t.name: {"metric": t.metric, "higher_is_better": True, "scores": t.scores, "n": t.n,
                               **({"per_seed": t.per_seed} if t.per_seed else {}), **({"ci": t.ci} if t.ci else {})}
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
        for m, values in t.get("per_seed", {}).items():  # absent in results written before training seeds
            if m not in scores or not isinstance(values, list) or not values or \
                    not all(isinstance(v, (int, float)) for v in values):
                raise UserError(f"results: task {name!r} per_seed of {m!r} must be a non-empty list of numbers "
                                "for a method in scores")
    if results.get("split", "validation") not in HELDOUT_PARTS:
        raise UserError(f"results: split must be one of {', '.join(HELDOUT_PARTS)}")
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
    """Tasks x methods, the best of each row in bold (default: the core methods of the run); with
    several training seeds, a trained method's cell is its mean ± the standard deviation over seeds."""
    methods = methods if methods is not None else _present(results, CORE_METHODS)
    lines = ["| task | metric | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, t in results["tasks"].items():
        vals = [t["scores"].get(m) for m in methods]
        best = max(v for v in vals if v is not None)
        cells = []
        for m, v in zip(methods, vals, strict=True):
            seeds = t.get("per_seed", {}).get(m, [])
            spread = f" ±{np.std(seeds, ddof=1):.3f}" if len(seeds) > 1 else ""
            cells.append("-" if v is None else (f"**{v:.3f}**{spread}" if v == best else f"{v:.3f}{spread}"))
        lines.append(f"| {name} | {t['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_description(results: dict) -> str:
    """Which held-out pairs and how many training seeds a results.json scores (results written before
    the two held-out parts existed scored one part, the pairs that are now the validation part)."""
    seeds = results.get("train_seeds", [0])
    trained = f"{len(seeds)} training seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
    if "split" not in results:
        return ("the single held-out part of the runs before the validation / test protocol (the pairs now in "
                "the validation part, on which the configuration was chosen), one training seed")
    if results["split"] == "test":
        return f"the **test** part of the held-out pairs (scored once for this configuration), {trained}"
    return f"the validation part of the held-out pairs (where configurations are chosen), {trained}"


def interval_description(results: dict) -> str:
    """How the intervals of the targets table were made."""
    seeds = results.get("train_seeds", [0])
    if len(seeds) > 1:
        return (f"bootstrap 95% interval over the queries / pairs and the {len(seeds)} training seeds together "
                "(each resample draws the pairs, shared by both methods, and each method's seeds with replacement)")
    return "paired bootstrap 95% interval over queries / pairs (one training seed)"


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
    split = results.get("split", "validation")
    seeds = results.get("train_seeds", [0])
    parts = [f"# MedTok quality: held-out benchmark, {split} split", "",
             f"Scored on {split_description(results)}. " + (
                 "Validation results are for choosing configurations; the published table is the test split's, "
                 "produced once per released configuration. " if split == "validation" else
                 "Every configuration choice was made on the validation part; this is the table to publish. ")
             + f"MedTok config: `{results['medtok_config']}` {results['medtok_overrides'] or ''}; "
             f"{results['n_codes']} codes ({', '.join(f'{k} {v}' for k, v in results['systems'].items())}); "
             f"split seed {results['seed']}. Higher is better everywhere; best per task in bold"
             + (f"; a trained method's cell is its mean ± the standard deviation over the {len(seeds)} training "
                "seeds (each seed's value: `per_seed` in results.json)." if len(seeds) > 1 else "."), "",
             markdown_table(results), "", *([parts_table(results), ""] if parts_table(results) else []),
             f"Targets (issue 9) met on {met} of {len(tg)} tasks:", ""]
    for name, row in tg.items():
        parts.append(f"- {name}: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in row.items()))
    if targets_table(results):
        parts += ["", "MedTok minus the method each target holds it to (the better single modality, the raw "
                  "text vector; GEM: 0.9 x raw text), means over training seeds, with a "
                  f"{interval_description(results)}; {results.get('n_resamples', '')} resamples, queries or "
                  "positive and negative pairs drawn with replacement, the same draws for both methods."
                  + ("" if len(seeds) > 1 else " Seed-to-seed spread of training is not in it."), "",
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
                  "graph-specific; with part gates, the weight each part gets; the first training seed's model):", ""]
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
    n_seeds = len(results.get("train_seeds", [0]))
    return (f"Generated by `python -m recipes.medtok_quality` from [`{folder}/results.json`]({folder}/results.json) "
            f"([report with every protocol]({folder}/report.md)); scored on {split_description(results)}; "
            f"MedTok config `{results['medtok_config']}`"
            f"{overrides}, {results['n_codes']} codes, training of the three MedTok variants"
            f"{'' if n_seeds == 1 else f' x {n_seeds} seeds'} {secs:.0f} s on the "
            f"shared 2-core machine. Issue-9 targets met on {met} of {len(tg)} tasks.\n\n"
            f"{markdown_table(results)}\n\n"
            + (f"MedTok minus the method each target holds it to, {interval_description(results)}:\n\n"
               f"{targets_table(results)}\n\n" if targets_table(results) else "")
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
    ax.set_title(f"MedTok vs single modalities, raw text and random vectors ({results.get('split', 'validation')} split)")
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
    relations, skipped = make_splits(cfg, kg, selected)  # both held-out parts, whichever --split is scored
    removed = pd.concat([r.split.removed for r in relations], ignore_index=True) if relations else \
        pd.DataFrame({"src": [], "dst": [], "relation": []})
    heldout = write_heldout(out / "heldout_edges.csv", kg, removed)
    with atomic_path(out / "heldout_pairs.csv") as tmp:
        heldout_pairs_table(relations, vocab.table).to_csv(tmp, index=False)
    del kg
    tcfg.data.heldout_edges = str(heldout.resolve())
    data = prepare_data(tcfg.data, progress=cfg.progress)
    prep_s = time.perf_counter() - t0
    emb, train_info, tok = all_embeddings(cfg, tcfg, data, out, sha256_file(heldout))
    row_of = pd.Series(np.arange(len(selected)), index=selected.code_id.to_numpy())
    t1 = time.perf_counter()
    tasks = evaluate(cfg, emb, data.vocab, tok, relations, row_of, tcfg.data.data_dir)
    meta = {"medtok_config": cfg.medtok_config, "medtok_overrides": list(cfg.medtok_overrides), "seed": cfg.seed,
            "split": cfg.split, "train_seeds": list(cfg.train_seeds),
            "n_codes": len(data), "systems": data.vocab["system"].value_counts().sort_index().to_dict(),
            "heldout_edges": len(removed), "skipped": skipped, "n_resamples": cfg.n_resamples,
            "training": {"prepare_s": round(prep_s, 1), **train_info},
            "eval_s": round(time.perf_counter() - t1, 1),
            **({"part_norms": part_norms(emb["medtok"][0], data.vocab["system"])} if "medtok" in emb else {})}
    results = results_json(tasks, meta)
    results["targets"] = targets(validate_results(results))
    from eval.provenance import provenance

    results["provenance"] = provenance(list(cfg.train_seeds))  # commit, dirty flag, machine, seeds, command
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
