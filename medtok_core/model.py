"""The MedTok encoder: text + graph encoders, cross-attention, regioned quantisation (paper Sec. 3).

Inputs are precomputed frozen text embeddings (see :mod:`medtok_core.text_encoder`):
``text`` [B, S, Dt] = description (+ synonyms) of each code, ``text_mask`` [B, S];
and a batched subgraph (PyG layout) whose nodes carry a node type and the frozen embedding of the
node's name. Outputs are four d-dim embeddings per code, each quantised into its codebook region:

    text-specific  -> text region       text-cross  -> shared region
    graph-specific -> graph region      graph-cross -> shared region

Everything is vectorised over the batch (``to_dense_batch`` + masks for attention); there is no
per-code Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.utils import scatter, to_dense_batch

from commons.config import require_range
from medtok_core.quantizer import QuantOut, RegionedCodebook

EMBEDDING_NAMES = ("text_specific", "text_cross", "graph_cross", "graph_specific")
EMBEDDING_REGIONS = ("text", "shared", "shared", "graph")
N_NODE_TYPES = 6  # code, disease, drug, gene, phenotype, side_effect (docs/interfaces.md)


@dataclass
class ModelConfig:
    """Architecture of the MedTok encoder and codebook."""

    text_dim: int = 384  # output size of the frozen text encoder
    dim: int = 64  # size d of codebook vectors and hidden states
    # Hidden width of the MLP from the frozen description vector to the text tokens (0: dim, a
    # d-wide bottleneck on the description; wider measured in docs/medtok_quality_ablations.md, round 6).
    text_hidden: int = 0
    gnn: Literal["gat", "gcn"] = "gat"  # graph encoder type
    gnn_layers: int = 2  # message-passing layers
    gat_heads: int = 4  # attention heads per GAT layer
    attn_heads: int = 4  # heads of the text/graph cross-attention
    n_relations: int = 64  # relation-type embeddings (>= KG relations)
    codebook_size: int = 2048  # codebook vectors in all regions
    text_frac: float = 0.3  # share of the codebook in the text region
    shared_frac: float = 0.4  # share in the shared region (graph: the rest)
    top_k: int = 5  # codebook vectors K mixed per token
    tau: float = 0.1  # softmax temperature over codebook distances
    beta: float = 0.25  # commitment loss weight
    # How the K tokens of an embedding are chosen and weighted (medtok_core.quantizer): "softmax"
    # (the K nearest, softmax(-distance / tau) weights, the paper's) or "pursuit" (matching pursuit,
    # signed projection weights; keeps far more of the encoder output).
    quantizer: Literal["softmax", "pursuit"] = "softmax"
    # Ablations: "text" hides the relational context (subgraph = the code's own node only);
    # "graph" hides the code's own text (text tokens off, own node name masked) so the code is
    # known only through its neighbours.
    modalities: Literal["both", "text", "graph"] = "both"
    # Residual connection around each cross-attention (query + attended values): the cross
    # embeddings keep their own modality instead of being only a summary of the other one.
    cross_residual: bool = False
    # A learned weight per code on each of the four parts of the exported embedding (2 * sigmoid of
    # a linear map of the four parts, 1 at the start), trained by the link loss. One cosine over the
    # concatenation averages the parts' similarities; where only the graph parts carry a code's
    # relations (a drug's interactions), the text parts dilute them (docs/medtok_quality_ablations.md).
    part_gates: bool = False
    # False: the graph encoder sees the code's own node without its name (as graph-only MedTok
    # does), so the graph parts carry the code's neighbourhood only and the text parts its
    # description; True: the own node carries the name embedding, like every other node.
    graph_own_text: bool = True
    dropout: float = 0.1  # dropout of the GNN and cross-attention
    aug_text_dropout: float = 0.3  # feature dropout of the augmented view (specific InfoNCE)
    aug_edge_dropout: float = 0.3  # edge dropout of the augmented view

    def __post_init__(self):
        require_range(self, "dim", 1)
        require_range(self, "text_hidden", 0)


@dataclass
class GraphInput:
    """A batch of subgraphs with node features already gathered (local, PyG-style indices)."""

    node_text: torch.Tensor   # [N, Dt] frozen text embedding of each node's name (zeros if none)
    node_type: torch.Tensor   # [N] long
    edge_index: torch.Tensor  # [2, E] long, local to the batch
    edge_type: torch.Tensor   # [E] long
    batch: torch.Tensor       # [N] graph index of each node
    center: torch.Tensor      # [B] index (into the N nodes) of each code's own node
    num_graphs: int


def unit_parts(pre: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, 4d]: the four encoder outputs, each unit-normalised, in EMBEDDING_NAMES order."""
    return torch.cat([F.normalize(pre[n], dim=-1) for n in EMBEDDING_NAMES], dim=-1)


@dataclass
class MedTokOutput:
    pre: dict[str, torch.Tensor]          # encoder outputs before quantisation, [B, d] each
    quant: dict[str, QuantOut] = field(default_factory=dict)
    aug: dict[str, torch.Tensor] | None = None  # pre-quantisation embeddings of the augmented view
    gates: torch.Tensor | None = None  # [B, 4] weight of each part (ModelConfig.part_gates), else 1

    def _gated(self, parts: torch.Tensor) -> torch.Tensor:
        """[B, 4d] concatenated parts, each scaled by its gate."""
        if self.gates is None:
            return parts
        return (parts.unflatten(-1, (4, -1)) * self.gates.unsqueeze(-1)).flatten(-2)

    def embedding(self) -> torch.Tensor:
        """[B, 4d]: the four quantised vectors (weighted codebook sums), in EMBEDDING_NAMES order."""
        return self._gated(torch.cat([self.quant[n].soft for n in EMBEDDING_NAMES], dim=-1))

    def continuous(self) -> torch.Tensor:
        """[B, 4d]: the counterpart of :meth:`embedding` before quantisation (unit-normalised parts)."""
        return self._gated(unit_parts(self.pre))

    def token_ids(self) -> torch.Tensor:
        return torch.stack([self.quant[n].ids for n in EMBEDDING_NAMES], dim=1)  # [B, 4, K]

    def token_weights(self) -> torch.Tensor:
        """[B, 4, K]: each token's weight in :meth:`embedding` (part gate included)."""
        weights = torch.stack([self.quant[n].weights for n in EMBEDDING_NAMES], dim=1)
        return weights if self.gates is None else weights * self.gates.unsqueeze(-1)


class GraphEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.node_proj = nn.Linear(cfg.text_dim, d)
        self.type_emb = nn.Embedding(N_NODE_TYPES, d)
        self.rel_emb = nn.Embedding(cfg.n_relations, d) if cfg.gnn == "gat" else None
        if cfg.gnn == "gat":
            self.convs = nn.ModuleList(
                GATConv(d, d // cfg.gat_heads, heads=cfg.gat_heads, edge_dim=d, add_self_loops=True)
                for _ in range(cfg.gnn_layers))
        else:
            self.convs = nn.ModuleList(GCNConv(d, d, add_self_loops=True) for _ in range(cfg.gnn_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(cfg.gnn_layers))
        self.pool = nn.Linear(2 * d, d)
        self.dropout = cfg.dropout

    def node_inputs(self, g: GraphInput) -> torch.Tensor:
        return self.node_proj(g.node_text) + self.type_emb(g.node_type)

    def forward(self, g: GraphInput, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Node embeddings [N, d] and the pooled graph-specific embedding [B, d].

        ``h``: precomputed :meth:`node_inputs` (shared by the original and the edge-dropped view)."""
        h = self.node_inputs(g) if h is None else h
        for conv, norm in zip(self.convs, self.norms, strict=True):
            if self.rel_emb is not None:
                msg = conv(h, g.edge_index, edge_attr=self.rel_emb(g.edge_type))
            else:
                msg = conv(h, g.edge_index)
            # Residual keeps the node's own text when its neighbourhood is large or noisy.
            h = norm(h + F.dropout(F.gelu(msg), self.dropout, self.training))
        mean = scatter(h, g.batch, dim=0, dim_size=g.num_graphs, reduce="mean")
        pooled = self.pool(torch.cat([h[g.center], mean], dim=-1))
        return h, pooled


class CrossAttention(nn.Module):
    """One query vector per code attends over a padded set of the other modality's vectors."""

    def __init__(self, d: int, heads: int, dropout: float, residual: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.residual = residual

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(query.unsqueeze(1), keys, keys, key_padding_mask=~mask, need_weights=False)
        out = out.squeeze(1)
        return self.norm(query + out if self.residual else out)


class MedTokModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        hidden = cfg.text_hidden or d
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.text_norm = nn.LayerNorm(d)
        self.no_text = nn.Parameter(torch.zeros(d))  # the text token of the "graph" ablation
        self.graph = GraphEncoder(cfg)
        self.text_to_graph = CrossAttention(d, cfg.attn_heads, cfg.dropout, cfg.cross_residual)   # eq. 1
        self.graph_to_text = CrossAttention(d, cfg.attn_heads, cfg.dropout, cfg.cross_residual)   # eq. 2
        self.codebook = RegionedCodebook(cfg.codebook_size, d, cfg.text_frac, cfg.shared_frac,
                                         cfg.top_k, cfg.tau, cfg.beta, cfg.quantizer)
        self.part_gate = nn.Linear(4 * d, 4) if cfg.part_gates else None
        if self.part_gate is not None:  # every part weighs 1 at the start
            nn.init.zeros_(self.part_gate.weight)
            nn.init.zeros_(self.part_gate.bias)

    # ---- modality switches / augmentation -------------------------------------------------
    def _apply_modalities(self, text: torch.Tensor, text_mask: torch.Tensor, g: GraphInput):
        if self.cfg.modalities == "text":
            g = _only_center(g)
        elif self.cfg.modalities == "graph" or not self.cfg.graph_own_text:
            node_text = g.node_text.clone()
            node_text[g.center] = 0.0
            g = GraphInput(node_text, g.node_type, g.edge_index, g.edge_type, g.batch, g.center, g.num_graphs)
        return text, text_mask, g

    def augment(self, text: torch.Tensor, g: GraphInput) -> tuple[torch.Tensor, GraphInput]:
        """Augmented view: feature dropout on the frozen text, edge dropout on the subgraph."""
        text = F.dropout(text, self.cfg.aug_text_dropout, training=True)
        keep = torch.rand(g.edge_index.shape[1], device=text.device) >= self.cfg.aug_edge_dropout
        g = GraphInput(g.node_text, g.node_type, g.edge_index[:, keep], g.edge_type[keep], g.batch,
                       g.center, g.num_graphs)
        return text, g

    # ---- encoders ---------------------------------------------------------------------------
    def _text_tokens(self, text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.text_norm(self.text_proj(text))                      # [B, S, d]
        if self.cfg.modalities == "graph":
            tokens = self.no_text.expand_as(tokens)
        m = text_mask.unsqueeze(-1).to(tokens.dtype)
        return tokens, (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)

    def encode(self, text: torch.Tensor, text_mask: torch.Tensor, g: GraphInput,
               augment: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The four pre-quantisation embeddings ([B, d] each); with ``augment`` also the two
        specific embeddings of an augmented view (the only ones its loss uses)."""
        text, text_mask, g = self._apply_modalities(text, text_mask, g)
        tokens, text_specific = self._text_tokens(text, text_mask)
        h0 = self.graph.node_inputs(g)
        nodes, graph_specific = self.graph(g, h0)
        dense, node_mask = to_dense_batch(nodes, g.batch, batch_size=g.num_graphs)  # [B, Nmax, d]
        text_cross = self.text_to_graph(text_specific, dense, node_mask)
        graph_cross = self.graph_to_text(graph_specific, tokens, text_mask)
        pre = {"text_specific": text_specific, "text_cross": text_cross,
               "graph_cross": graph_cross, "graph_specific": graph_specific}
        aug = None
        if augment:
            aug_text, aug_g = self.augment(text, g)
            _, aug_text_specific = self._text_tokens(aug_text, text_mask)
            _, aug_graph_specific = self.graph(aug_g, h0)
            aug = {"text_specific": aug_text_specific, "graph_specific": aug_graph_specific}
        return pre, aug

    def gates(self, pre: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[B, 4] weight of each part in the exported embedding (None without part gates)."""
        if self.part_gate is None:
            return None
        return 2 * torch.sigmoid(self.part_gate(unit_parts(pre)))

    def quantize(self, pre: dict[str, torch.Tensor]) -> MedTokOutput:
        out = MedTokOutput(pre=pre, gates=self.gates(pre))
        for name, region in zip(EMBEDDING_NAMES, EMBEDDING_REGIONS, strict=True):
            out.quant[name] = self.codebook(pre[name], region)
        return out

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, g: GraphInput,
                augment: bool = False) -> MedTokOutput:
        """Quantised tokens; with ``augment`` also encodes an augmented view (one call, so DDP sees
        a single forward per step)."""
        pre, aug = self.encode(text, text_mask, g, augment)
        out = self.quantize(pre)
        out.aug = aug
        return out


def _only_center(g: GraphInput) -> GraphInput:
    """Keep each graph's own node only (the text-only ablation)."""
    idx = g.center
    return GraphInput(g.node_text[idx], g.node_type[idx],
                      torch.zeros(2, 0, dtype=torch.long, device=idx.device),
                      torch.zeros(0, dtype=torch.long, device=idx.device),
                      torch.arange(g.num_graphs, device=idx.device), torch.arange(g.num_graphs, device=idx.device),
                      g.num_graphs)


def build_text_inputs(encode_fn, descriptions: list[str], synonyms: list[list[str]] | None,
                      max_synonyms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 1 + max_synonyms, Dt] text tokens (description first) and their mask."""
    n_slots = 1 + max_synonyms
    texts, slots = [], []
    for i, desc in enumerate(descriptions):
        extra = [s for s in (synonyms[i] if synonyms else []) if isinstance(s, str) and s.strip()]
        for j, t in enumerate([desc] + extra[:max_synonyms]):
            texts.append(t)
            slots.append(i * n_slots + j)
    emb = encode_fn(texts)
    text = torch.zeros(len(descriptions) * n_slots, emb.shape[1])
    mask = torch.zeros(len(descriptions) * n_slots, dtype=torch.bool)
    idx = torch.tensor(slots, dtype=torch.long)
    text[idx] = emb
    mask[idx] = True
    return text.view(len(descriptions), n_slots, -1), mask.view(len(descriptions), n_slots)


def build_star_inputs(encode_fn, descriptions: list[str], synonyms: list[list[str]] | None,
                      max_synonyms: int, neighbors: list[list[int]] | None, kg):
    """Model inputs for codes outside the training graph: each code is a star over its given KG nodes."""
    text, mask = build_text_inputs(encode_fn, descriptions, synonyms, max_synonyms)
    b = len(descriptions)
    nbrs = [list(map(int, n)) for n in neighbors] if neighbors is not None else [[] for _ in range(b)]
    sizes = torch.tensor([1 + len(n) for n in nbrs])
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    center = ptr[:-1]
    flat = torch.tensor([x for n in nbrs for x in n], dtype=torch.long)
    node_text = torch.zeros(int(ptr[-1]), text.shape[-1])
    node_type = torch.zeros(int(ptr[-1]), dtype=torch.long)
    node_text[center] = text[:, 0]
    if flat.numel():
        if kg is None:
            raise ValueError("neighbors need a knowledge graph")
        is_nbr = torch.ones(int(ptr[-1]), dtype=torch.bool)
        is_nbr[center] = False
        names = [str(kg.node_name[i]) for i in flat.tolist()]
        node_text[is_nbr] = encode_fn(names)
        node_type[is_nbr] = torch.as_tensor(np.asarray(kg.node_type)[flat.numpy()], dtype=torch.long)
        owner = torch.repeat_interleave(torch.arange(b), sizes - 1)
        src = center[owner]
        dst = is_nbr.nonzero().squeeze(1)
        edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    else:
        edge_index = torch.zeros(2, 0, dtype=torch.long)
    batch = torch.repeat_interleave(torch.arange(b), sizes)
    g = GraphInput(node_text, node_type, edge_index, torch.zeros(edge_index.shape[1], dtype=torch.long),
                   batch, center, b)
    return text, mask, g
