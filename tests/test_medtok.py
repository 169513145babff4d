"""MedTok model, training, export and tokenizer on a tiny synthetic vocabulary + graph."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from commons.errors import UserError
from medtok_core.losses import LossWeights
from medtok_core.model import EMBEDDING_NAMES, MedTokModel, ModelConfig
from medtok_core.tokenizer import MedTokTokenizer, UnknownCodeWarning
from medtok_core.train import (
    DataConfig,
    OptimConfig,
    TrainConfig,
    TrainData,
    encode_all,
    export_artifact,
    resolved_config,
    train,
)

TEXT_DIM = 16


class TinySubgraphs:
    """Contract-shaped SubgraphIndex stand-in: each code's node + its 1-hop neighbours."""

    def __init__(self, n_nodes: int, edges: np.ndarray, edge_type: np.ndarray, node_type: np.ndarray,
                 code_node: np.ndarray, max_nodes: int = 6):
        self.adj = {i: [] for i in range(n_nodes)}
        for (a, b), t in zip(edges.T.tolist(), edge_type.tolist(), strict=True):
            self.adj[a].append((b, t))
        self.node_type, self.code_node, self.max_nodes = node_type, code_node, max_nodes

    def batch(self, rows):
        node_ids, ei, et, batch, center, off = [], [], [], [], [], 0
        for gi, r in enumerate(rows):
            c = int(self.code_node[int(r)])
            nb = self.adj[c][: self.max_nodes - 1]
            nodes = [c] + [b for b, _ in nb]
            node_ids += nodes
            for j, (_, t) in enumerate(nb):
                ei += [(off, off + j + 1), (off + j + 1, off)]
                et += [t, t]
            batch += [gi] * len(nodes)
            center.append(off)
            off += len(nodes)
        return SimpleNamespace(
            node_ids=torch.tensor(node_ids), node_type=torch.tensor(self.node_type[node_ids]),
            edge_index=torch.tensor(ei, dtype=torch.long).t().reshape(2, -1), edge_type=torch.tensor(et),
            batch=torch.tensor(batch), center=torch.tensor(center), num_graphs=len(rows))


def tiny_vocab() -> pd.DataFrame:
    rows = []
    for ch in "ABCD":
        rows.append(("ICD10CM", f"{ch}00-{ch}09", f"block {ch}", ""))
        for i in range(4):
            cat = f"{ch}0{i}"
            rows.append(("ICD10CM", cat, f"category {cat}", f"{ch}00-{ch}09"))
            rows.append(("ICD10CM", f"{cat}.1", f"subcategory {cat} one", cat))
    for i in range(6):
        rows.append(("ATC", f"A10B{'ABCDEF'[i]}", f"drug class {i}", "A10B"))
    rows.append(("ATC", "A10B", "blood glucose lowering drugs", ""))
    df = pd.DataFrame(rows, columns=["system", "code", "description", "parent"])
    df.insert(0, "code_id", np.arange(len(df), dtype=np.int32))
    return df


def tiny_data(seed: int = 0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    vocab = tiny_vocab()
    n = len(vocab)
    n_other = 20
    n_nodes = n + n_other
    node_type = np.concatenate([np.zeros(n, dtype=np.int64), 1 + np.arange(n_other) % 5])
    rng = np.random.default_rng(seed)
    src = np.concatenate([np.arange(n), rng.integers(0, n, 60)])
    dst = np.concatenate([rng.integers(n, n_nodes, n), rng.integers(n, n_nodes, 60)])
    edges = np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])])
    etype = np.tile(rng.integers(0, 3, len(src)), 2)
    # test hook: random "frozen text" features instead of a real encoder
    text_table = torch.randn(n + n_nodes, TEXT_DIM, generator=g).to(torch.float16)
    code_text = torch.full((n, 2), -1, dtype=torch.long)
    code_text[:, 0] = torch.arange(n)
    code_text[::3, 1] = torch.arange(n, n + len(code_text[::3]))
    node_text = torch.arange(n_nodes) + n
    subs = TinySubgraphs(n_nodes, edges, etype, node_type, np.arange(n))
    return TrainData(vocab, text_table, code_text, node_text, torch.as_tensor(node_type), subs.batch, 3,
                     {"path": None, "id": "random-test", "max_synonyms": 1})


def tiny_config(out: Path, **kw) -> TrainConfig:
    cfg = TrainConfig(
        data=DataConfig(max_synonyms=1),
        model=ModelConfig(text_dim=TEXT_DIM, dim=8, gat_heads=2, attn_heads=2, codebook_size=60, top_k=3),
        loss=LossWeights(), optim=OptimConfig(lr=5e-3, epochs=6, batch_size=16, warmup_steps=2),
        seed=0, output_dir=str(out), checkpoint_every=1000, init_samples=64, restart_every=5,
        progress=False, log_every=1)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("medtok")
    data = tiny_data()
    cfg = tiny_config(out / "run")
    result = train(cfg, data)
    artifact = export_artifact(out / "artifact", cfg, result.model, data)
    return SimpleNamespace(data=data, cfg=cfg, result=result, artifact=artifact, out=out)


def test_losses_finite_and_total_decreases(trained):
    hist = trained.result.history
    assert len(hist) == trained.result.steps == 6 * math.ceil(len(trained.data) / 16)
    for rec in hist:
        for k in ("vq", "kl", "shared_nce", "align", "ortho", "specific_nce", "total"):
            assert math.isfinite(rec[k]), (k, rec)
    first = np.mean([r["total"] for r in hist[:4]])
    last = np.mean([r["total"] for r in hist[-4:]])
    assert last < first


def test_region_ids_never_collide(trained):
    table = encode_all(trained.result.model, trained.data)
    cb = trained.result.model.codebook
    ranges = [cb.region_range(r) for r in ("text", "shared", "graph")]
    assert ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == ranges[2][0]
    assert ranges[2][1] == cb.size
    expected = [0, 1, 1, 2]  # text-specific, text-cross, graph-cross, graph-specific
    for slot, region in enumerate(expected):
        assert (cb.region_of(table["ids"][:, slot].long()) == region).all()
    assert torch.allclose(table["weights"].sum(-1), torch.ones(len(trained.data), 4), atol=1e-5)


def test_artifact_roundtrip_identical(trained, tmp_path):
    tok = MedTokTokenizer.from_pretrained(trained.artifact)
    table = encode_all(trained.result.model, trained.data)
    assert torch.equal(tok.embed(list(trained.data.vocab["code"])), table["embeddings"])
    assert torch.equal(tok.encode(list(trained.data.vocab["code"])).view(-1, 4, 3), table["ids"].long())
    # the model weights in the artifact reproduce the table
    again = encode_all(tok.model(), trained.data)
    assert torch.allclose(again["embeddings"], table["embeddings"], atol=1e-6)
    tok.save_pretrained(tmp_path / "copy")
    tok2 = MedTokTokenizer.from_pretrained(tmp_path / "copy")
    assert torch.equal(tok2.embeddings, tok.embeddings) and torch.equal(tok2.ids, tok.ids)
    assert tok2.tokenize("ICD10CM:A01") == tok.tokenize("A01")


def test_resume_matches_uninterrupted(tmp_path):
    data = tiny_data()
    full = train(tiny_config(tmp_path / "a", max_steps=8), data)
    train(tiny_config(tmp_path / "b", max_steps=4), data)
    resumed = train(tiny_config(tmp_path / "b", max_steps=8), data)
    assert resumed.steps == full.steps == 8
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [r["total"] for r in full.history] == [r["total"] for r in resumed.history]


def test_tokenizer_api(trained):
    tok = MedTokTokenizer.from_pretrained(trained.artifact)
    k = tok.top_k
    toks = tok.tokenize("ICD10CM:A01")
    assert len(toks) == 4 * k
    tags = [t[1] for t in toks]
    assert tags == ["t"] * k + ["s"] * (2 * k) + ["g"] * k
    assert tok.tokenize("icd10cm:a01") == toks  # case-insensitive
    assert torch.equal(tok.encode("A01.1"), tok.encode("A011"))  # dotted == undotted
    assert tok.encode(["A01", "ATC:A10BA"]).shape == (2, 4 * k)
    assert tok.embed("A01").shape == (1, tok.embedding_dim) == (1, 32)
    assert tok.has_code("A01.1") and not tok.has_code("A01.19")
    assert tok.describe("A01") == "category A01"
    with pytest.warns(UnknownCodeWarning, match="A01.1"):
        fallback = tok.encode("ICD10CM:A01.19")  # unknown child -> nearest known ancestor
    assert torch.equal(fallback, tok.encode("A01.1"))
    with pytest.raises(UserError, match="empty"):
        tok.encode("")
    with pytest.raises(UserError, match="empty"):
        tok.embed("ICD10CM:  ")
    with pytest.raises(UserError, match="unknown code system 'SNOMED'"):
        tok.encode("SNOMED:A01")
    with pytest.raises(UserError, match="no known ancestor"):
        tok.encode("ICD10CM:Z99")
    with pytest.raises(UserError, match="string"):
        tok.encode([None])  # type: ignore[list-item]


def test_tokenizer_rejects_malformed_artifacts(trained, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        MedTokTokenizer.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in trained.artifact.iterdir():
        if f.name != "manifest.json":  # the file checks below, not the manifest, must catch each case
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "token_table.safetensors").unlink()
    with pytest.raises(UserError, match="missing token_table.safetensors"):
        MedTokTokenizer.from_pretrained(broken)

    def unverified():
        return pytest.warns(UserWarning, match="no manifest.json; loading it unverified")

    (broken / "token_table.safetensors").write_bytes(b"not a safetensors file")
    with unverified(), pytest.raises(UserError, match="token_table.safetensors is unreadable"):
        MedTokTokenizer.from_pretrained(broken, allow_unverified=True)
    (broken / "token_table.safetensors").write_bytes((trained.artifact / "token_table.safetensors").read_bytes())
    (broken / "config.json").write_text("{not json")
    with unverified(), pytest.raises(UserError, match="config.json is not valid JSON"):
        MedTokTokenizer.from_pretrained(broken, allow_unverified=True)
    (broken / "config.json").write_text(json.dumps({"format": "other"}))
    with unverified(), pytest.raises(UserError, match="not a MedTok artifact"):
        MedTokTokenizer.from_pretrained(broken, allow_unverified=True)


def test_damaged_artifacts_never_load(trained, tmp_path):
    """A flipped byte is caught by the export manifest; NaN values by the table check without one."""
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in trained.artifact.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    table = bytearray((damaged / "token_table.safetensors").read_bytes())
    table[-5] ^= 0xFF
    (damaged / "token_table.safetensors").write_bytes(bytes(table))
    with pytest.raises(UserError, match="token_table.safetensors differs from the sha256"):
        MedTokTokenizer.from_pretrained(damaged)
    (damaged / "manifest.json").unlink()
    tensors = load_file(trained.artifact / "token_table.safetensors")
    tensors["embeddings"][3, 0] = float("nan")
    save_file(tensors, str(damaged / "token_table.safetensors"))
    with pytest.raises(UserError, match="has no manifest.json"):  # required since issue 26
        MedTokTokenizer.from_pretrained(damaged)
    with pytest.warns(UserWarning, match="unverified"), pytest.raises(UserError, match="NaN or infinite values for 1 code"):
        MedTokTokenizer.from_pretrained(damaged, allow_unverified=True)


def test_text_and_graph_ablations_run(tmp_path):
    data = tiny_data()
    for mode in ("text", "graph"):
        cfg = tiny_config(tmp_path / mode, max_steps=3)
        cfg.model.modalities = mode
        res = train(cfg, data)
        assert all(math.isfinite(r["total"]) for r in res.history)


@pytest.mark.integration
def test_real_minilm_encode_new(tmp_path):
    """Real all-MiniLM-L6-v2 features: cache reuse, and encoding new codes from descriptions."""
    from medtok_core.text_encoder import TextEncoder

    enc = TextEncoder()
    vocab = tiny_vocab()
    texts = [f"{d} of the {s} system" for d, s in zip(vocab["description"], vocab["system"], strict=True)]
    emb = enc.encode_texts(texts)
    assert emb.shape == (len(texts), 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(texts)), atol=1e-2)
    assert torch.equal(TextEncoder().encode_texts(texts[:3]), emb[:3])  # read back from the disk cache
    data = tiny_data()
    data.text_table = torch.cat([emb, emb[torch.arange(len(data.text_table) - len(emb)) % len(emb)]]).half()
    data.text_encoder = {"path": None, "id": enc.encoder_id, "max_synonyms": 1}
    cfg = tiny_config(tmp_path / "run", max_steps=2)
    cfg.model.text_dim = 384
    res = train(cfg, data)
    art = export_artifact(tmp_path / "art", cfg, res.model, data)
    tok = MedTokTokenizer.from_pretrained(art)
    new = tok.encode_new(["type 2 diabetes mellitus", "metformin"], synonyms=[["T2DM"], []])
    assert new["ids"].shape == (2, 4, 3) and new["embeddings"].shape == (2, 32)
    again = tok.encode_new(["type 2 diabetes mellitus"], synonyms=[["T2DM"]])
    assert torch.allclose(again["embeddings"], new["embeddings"][:1], atol=1e-5)
    kg = SimpleNamespace(node_name=np.array(["insulin", "hyperglycemia"]), node_type=np.array([2, 4]))
    star = tok.encode_new(["diabetes"], neighbors=[[0, 1]], kg=kg)
    assert star["ids"].shape == (1, 4, 3)
    with pytest.raises(UserError, match="non-empty description"):
        tok.encode_new([""])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.embed("A01")  # known code: no warning


def test_link_and_distill_losses_train_and_resume(tmp_path):
    """Link pairs ride in the batch's forward pass; the run stays finite and resumable."""
    data = tiny_data()
    data.link_pairs = {"code_is_a": torch.tensor([[1, 0], [2, 1], [4, 3], [5, 4]]),
                       "indication": torch.tensor([[40, 2], [41, 6]])}

    def cfg(out, steps):
        c = tiny_config(out, max_steps=steps)
        c.loss.link, c.loss.text_distill, c.loss.quantized_share, c.model.cross_residual = 1.0, 1.0, 0.5, True
        c.optim.link_batch = 4
        return c

    full = train(cfg(tmp_path / "a", 6), data)
    for rec in full.history:
        assert math.isfinite(rec["link"]) and math.isfinite(rec["text_distill"]), rec
    train(cfg(tmp_path / "b", 3), data)
    resumed = train(cfg(tmp_path / "b", 6), data)
    assert [r["total"] for r in full.history] == [r["total"] for r in resumed.history]


def test_part_gates_start_at_one_learn_and_the_tokens_still_make_the_embedding(tmp_path):
    """With model.part_gates each code weighs its four parts (trained by the link and the fused
    distillation losses); the exported tokens (ids, gated weights) still sum to the exported
    embedding, and the artifact reproduces it."""
    import torch.nn.functional as F

    data = tiny_data()
    data.link_pairs = {"indication": torch.tensor([[40, 2], [41, 6], [42, 10], [39, 14]])}
    c = tiny_config(tmp_path / "run", max_steps=8)
    c.model.part_gates, c.loss.link, c.loss.fused_distill, c.optim.link_batch = True, 1.0, 1.0, 4
    fresh = MedTokModel(resolved_config(c, data).model)
    assert fresh.gates({n: torch.randn(3, 8) for n in EMBEDDING_NAMES}).eq(1).all()
    result = train(c, data)
    assert all(math.isfinite(r["fused_distill"]) and math.isfinite(r["link"]) for r in result.history)
    table = encode_all(result.model, data)
    book = F.normalize(result.model.codebook.embedding, dim=-1)
    rebuilt = (table["weights"].unsqueeze(-1) * book[table["ids"].long()]).sum(2).reshape(len(data), -1)
    assert torch.allclose(rebuilt, table["embeddings"], atol=1e-5)
    artifact = export_artifact(tmp_path / "artifact", c, result.model, data)
    again = encode_all(MedTokTokenizer.from_pretrained(artifact).model(), data)
    assert torch.allclose(again["embeddings"], table["embeddings"], atol=1e-6)
    # the gates learnt per-code weights: the same model without them exports the same tokens,
    # each part scaled back by its gate
    result.model.part_gate = None
    plain = encode_all(result.model, data)
    assert torch.equal(plain["ids"], table["ids"])
    ratio = table["embeddings"].view(len(data), 4, -1).norm(dim=-1) / plain["embeddings"].view(len(data), 4, -1).norm(dim=-1)
    assert ((ratio > 0) & (ratio < 2)).all() and (ratio - 1).abs().max() > 1e-3


def test_similarity_distill_is_zero_for_a_rotation():
    from medtok_core.losses import similarity_distill

    x = torch.randn(10, 6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    for t in (0.0, 0.1):
        assert similarity_distill(x @ q, x, t).item() < 1e-6
        assert similarity_distill(torch.randn(10, 6), x, t).item() > 1e-3


def test_pursuit_quantizer_reconstructs_better_and_trains(tmp_path):
    from medtok_core.quantizer import RegionedCodebook

    torch.manual_seed(0)
    x = torch.randn(64, 16)
    errors = {}
    for mode in ("softmax", "pursuit"):
        cb = RegionedCodebook(120, 16, top_k=4, mode=mode)
        cb.init_from_data({r: torch.randn(200, 16) for r in ("text", "shared", "graph")})
        q = cb(x, "shared")
        lo, hi = cb.region_range("shared")
        assert ((q.ids >= lo) & (q.ids < hi)).all() and q.ids.shape == q.weights.shape == (64, 4)
        # the exported vector is exactly the weighted sum of its tokens' (unit) codebook vectors
        book = torch.nn.functional.normalize(cb.embedding, dim=-1)
        assert torch.allclose((q.weights.unsqueeze(-1) * book[q.ids]).sum(1), q.soft, atol=1e-5)
        errors[mode] = 1 - torch.nn.functional.cosine_similarity(q.soft, x).mean()
    assert errors["pursuit"] < errors["softmax"]
    cfg = tiny_config(tmp_path / "p", max_steps=3)
    cfg.model.quantizer = "pursuit"
    res = train(cfg, tiny_data())
    assert all(math.isfinite(r["total"]) for r in res.history)


def test_code_resolution_is_bounded_by_the_longest_known_code(tmp_path):
    """A long unknown code tries only prefixes up to the longest vocabulary code (linear time),
    and an absurdly long string is refused at once instead of hanging."""
    from qa.tiny import TINY_CODES, build_tiny_medtok

    tok = MedTokTokenizer.from_pretrained(build_tiny_medtok(tmp_path / "art", TINY_CODES))
    calls = []
    original = tok._lookup
    tok._lookup = lambda system, key: calls.append(key) or original(system, key)
    hit = tok.resolve("ICD10CM:E119" + "7" * 100, warn=False)
    assert (hit.system, hit.code) == ("ICD10CM", "E11.9")
    exact, *prefixes = calls  # one exact lookup, then prefixes no longer than the longest code
    assert len(exact) == 104 and max(map(len, prefixes)) <= len("A10BA02") and len(prefixes) <= len("A10BA02")
    with pytest.raises(UserError, match="1000000 characters is too long"):
        tok.resolve("E" * 1_000_000)


def test_fused_distillation_leaves_out_the_excluded_systems(tmp_path):
    """loss.fused_distill_exclude_systems: the excluded codes (here ATC) neither take part in the
    fused distillation nor get a gradient from it; the others get the same term as alone."""
    from medtok_core.losses import medtok_losses, similarity_distill
    from medtok_core.train import _batch_inputs, fused_distill_mask

    data = tiny_data()
    c = tiny_config(tmp_path / "run", max_steps=1)
    c.model.part_gates, c.loss.fused_distill, c.loss.fused_distill_exclude_systems = True, 1.0, ["ATC"]
    model = MedTokModel(resolved_config(c, data).model)
    rows = torch.arange(len(data))
    text, mask, g = _batch_inputs(data, rows, torch.device("cpu"))
    out = model(text, mask, g)
    keep = fused_distill_mask(data, c.loss)[rows]
    assert keep.tolist() == (data.vocab["system"] != "ATC").tolist()
    emb = out.continuous()
    emb.retain_grad()
    out.continuous = lambda: emb  # the same tensor, so its gradient can be read
    loss = medtok_losses(out, None, c.loss, text[:, 0], keep)["fused_distill"]
    assert loss.item() == pytest.approx(similarity_distill(emb[keep], text[keep, 0], c.loss.distill_temperature).item())
    loss.backward()
    assert emb.grad[~keep].abs().sum() == 0 and emb.grad[keep].abs().sum() > 0
    c.loss.fused_distill_exclude_systems = []
    assert fused_distill_mask(data, c.loss) is None


@pytest.mark.parametrize("own_text", [True, False])
def test_graph_own_text_decides_whether_the_graph_parts_see_the_codes_name(own_text):
    """model.graph_own_text=False: the graph parts come from the code's neighbourhood only (as in
    graph-only MedTok), while the text parts still read its description."""
    from medtok_core.train import _batch_inputs

    data = tiny_data()
    cfg = tiny_config(Path("unused"))
    cfg.model.graph_own_text = own_text
    model = MedTokModel(resolved_config(cfg, data).model).eval()
    text, mask, g = _batch_inputs(data, torch.arange(8), torch.device("cpu"))
    renamed = g.node_text.clone()
    renamed[g.center] = torch.randn(len(g.center), renamed.shape[1])  # another name for each code
    g2 = type(g)(renamed, g.node_type, g.edge_index, g.edge_type, g.batch, g.center, g.num_graphs)
    text2 = text.clone()
    text2[:, 0] = renamed[g.center]
    with torch.no_grad():
        pre, _ = model.encode(text, mask, g)
        pre2, _ = model.encode(text2, mask, g2)
    assert not torch.allclose(pre["text_specific"], pre2["text_specific"])
    assert torch.allclose(pre["graph_specific"], pre2["graph_specific"]) == (not own_text)


def test_hierarchy_blocks_keep_a_codes_neighbours_in_its_batch_and_resume(tmp_path):
    """optim.hierarchy_block: an epoch is a shuffle of blocks of consecutive (system, code) rows,
    so a code's parent and siblings share its block; every row once; reproducible per
    (seed, epoch), so a resumed run sees the same batches."""
    from medtok_core.train import epoch_order, hierarchy_blocks

    vocab = pd.DataFrame({"system": ["ICD9CM", "ICD10CM", "ICD10CM", "ICD10CM", "ICD10CM", "ICD9CM"],
                          "code": ["250", "E11.9", "E10", "E11", "E11.0", "250.0"]})
    blocks = hierarchy_blocks(vocab, 3)
    assert [b.tolist() for b in blocks] == [[2, 3, 4], [1, 0, 5]]  # E10 E11 E11.0 | E11.9 250 250.0
    assert hierarchy_blocks(vocab, 0) is None
    order = epoch_order(6, 0, 0, blocks)
    assert sorted(order.tolist()) == list(range(6))
    assert order[:3].tolist() in ([2, 3, 4], [1, 0, 5])
    assert torch.equal(order, epoch_order(6, 0, 0, blocks))
    assert any(not torch.equal(epoch_order(6, 0, e, blocks), order) for e in range(1, 5))

    data = tiny_data()

    def cfg(out, steps):
        c = tiny_config(out, max_steps=steps)
        c.optim.hierarchy_block = 4
        return c

    full = train(cfg(tmp_path / "a", 6), data)
    train(cfg(tmp_path / "b", 3), data)
    resumed = train(cfg(tmp_path / "b", 6), data)
    assert [r["total"] for r in full.history] == [r["total"] for r in resumed.history]
    random_batches = train(tiny_config(tmp_path / "c", max_steps=6), data)
    assert [r["total"] for r in full.history] != [r["total"] for r in random_batches.history]


def test_text_hidden_widens_the_text_mlp_and_the_artifact_rebuilds_it(tmp_path):
    """model.text_hidden sets the hidden width of the description MLP (0: dim, the old shape, so
    older artifacts load unchanged); an artifact trained with it rebuilds the same model."""
    assert MedTokModel(ModelConfig(text_dim=TEXT_DIM, dim=8)).text_proj[0].out_features == 8
    data = tiny_data()
    cfg = tiny_config(tmp_path / "run", max_steps=3)
    cfg.model.text_hidden = 24
    result = train(cfg, data)
    assert result.model.text_proj[0].out_features == 24
    tok = MedTokTokenizer.from_pretrained(export_artifact(tmp_path / "artifact", cfg, result.model, data))
    assert tok.model().text_proj[0].out_features == 24
    assert torch.allclose(encode_all(tok.model(), data)["embeddings"], tok.embeddings, atol=1e-6)


@pytest.mark.parametrize("excludes_them", [False, True])
def test_text_distillation_leaves_out_the_excluded_systems_only_when_asked(tmp_path, excludes_them):
    """loss.text_distill_excludes_them: the systems of fused_distill_exclude_systems (ATC) are
    left out of text_distill too; by default every code's text-specific part is distilled."""
    from medtok_core.losses import medtok_losses, similarity_distill
    from medtok_core.train import _batch_inputs, fused_distill_mask

    data = tiny_data()
    c = tiny_config(tmp_path / "run", max_steps=1)
    c.loss.text_distill, c.loss.fused_distill_exclude_systems = 1.0, ["ATC"]
    c.loss.text_distill_excludes_them = excludes_them
    model = MedTokModel(resolved_config(c, data).model)
    text, mask, g = _batch_inputs(data, torch.arange(len(data)), torch.device("cpu"))
    out = model(text, mask, g)
    keep = fused_distill_mask(data, c.loss)
    rows = keep if excludes_them else torch.ones_like(keep)
    loss = medtok_losses(out, None, c.loss, text[:, 0], keep)["text_distill"]
    expected = similarity_distill(out.pre["text_specific"][rows], text[rows, 0], c.loss.distill_temperature)
    assert loss.item() == pytest.approx(expected.item())
    assert (~keep).any() and keep.any()


def test_loss_history_of_a_tiny_seeded_model_is_pinned(tmp_path):
    """Every default-off option (hierarchy batches, a wider text MLP, the text-distillation
    exclusion) must leave the training of an existing recipe exactly where it was: six steps of a
    tiny seeded model with gates, link pairs, both distillations and the ATC exclusion, pinned."""
    data = tiny_data()
    data.link_pairs = {"code_is_a": torch.tensor([[1, 0], [2, 1], [4, 3], [5, 4]]),
                       "indication": torch.tensor([[40, 2], [41, 6]])}
    c = tiny_config(tmp_path / "run", max_steps=6)
    c.model.part_gates, c.model.cross_residual = True, True
    c.loss.link, c.loss.text_distill, c.loss.fused_distill = 1.0, 1.0, 0.5
    c.loss.fused_distill_exclude_systems, c.optim.link_batch = ["ATC"], 4
    totals = [r["total"] for r in train(c, data).history]
    assert totals == pytest.approx([37.897308, 37.337234, 32.035439, 28.791538, 26.393885, 27.223133], rel=1e-4)


# ----------------------------------------------------------------------------- tokenizer reading aids
@pytest.fixture(scope="module")
def tok(trained):
    return MedTokTokenizer.from_pretrained(trained.artifact)


def test_class_has_a_docstring_and_repr_says_what_it_holds(tok):
    assert "from_pretrained" in MedTokTokenizer.__doc__ and "nearest_codes" in MedTokTokenizer.__doc__
    text = repr(tok)
    assert text.startswith(f"MedTokTokenizer({len(tok)} codes (ATC=7, ICD10CM=36), K={tok.top_k}, dim=32, ")
    assert str(tok.path) in text


def test_nearest_codes_by_code_and_by_vector_agree_with_a_brute_force_cosine(tok):
    emb = torch.nn.functional.normalize(tok.embeddings, dim=1)
    i = tok.code_id("ICD10CM:A01")
    cos = emb @ emb[i]
    cos[i] = -2
    expected = [tok.vocab.at[j, "system"] + ":" + tok.vocab.at[j, "code"] for j in torch.argsort(cos, descending=True)[:5].tolist()]
    hits = tok.nearest_codes("ICD10CM:A01", k=5)
    assert [c for c, _ in hits] == expected  # the code itself left out
    assert [s for _, s in hits] == pytest.approx(sorted([s for _, s in hits], reverse=True))
    by_vector = tok.nearest_codes(tok.embed("A01")[0].numpy(), k=1)
    assert by_vector[0][0] == "ICD10CM:A01" and by_vector[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len(tok.nearest_codes("A01", k=10_000)) == len(tok) - 1


@pytest.mark.parametrize("bad, match", [(np.zeros(3), "has 3 values"), (np.zeros(32), "non-zero"),
                                        (np.full(32, np.nan), "finite")])
def test_nearest_codes_rejects_bad_vectors(tok, bad, match):
    with pytest.raises(UserError, match=match):
        tok.nearest_codes(bad, k=3)
    with pytest.raises(UserError, match="positive integer"):
        tok.nearest_codes("A01", k=0)


def test_token_weights_are_each_tokens_share_of_the_embedding(tok):
    """What the docstring says they are: the embedding's part p is sum_k w[p, k] * unit codebook vector."""
    book = torch.nn.functional.normalize(tok.model().codebook.embedding.detach(), dim=-1)
    codes = list(tok.vocab["code"][:5])
    ids, w = tok.encode(codes).reshape(5, 4, -1), tok.token_weights(codes).reshape(5, 4, -1)
    mixed = (w.unsqueeze(-1) * book[ids]).sum(2).reshape(5, -1)
    assert torch.allclose(mixed, tok.embed(codes), atol=1e-5)
    assert "do not sum to 1" in MedTokTokenizer.token_weights.__doc__
    assert not hasattr(MedTokTokenizer, "tokens_of_ids")
