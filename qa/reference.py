"""Embeddings-only references: how much of a MedDDx answer the code vectors alone carry (no LLM).

Per option, a small MLP scores [stem vector, option vector, their product], where the stem vector
is the mean of the stem's code vectors and the option vector the mean of the option's (both L2
normalised, so the product's sum is their cosine); a softmax over the options gives the answer.

    ref-medtok   the codes' MedTok embeddings (the artifact's token table)
    ref-text     the frozen text-encoder vectors of the codes' descriptions (the same codes)

Codes are the ones the prefix methods see (:class:`qa.prefix.CodeSource`: linked codes mapped
onto what the artifact holds). An option without codes gets a learned "no code" vector, a stem
without codes another one. A question with no coded option carries no signal for this model: it
is answered with uniform probabilities and a letter drawn from its id (never a fixed letter, so
letter bias cannot score), and such questions are left out of training. Ties between equally
scored options (two options mapped onto the same codes) are broken the same way.

The model is option-order equivariant by construction (one shared scorer per option), so it needs
no option shuffling. It trains on the fine-tunes' training questions and stops early on their
held-out slice (the same :func:`qa.training.make_split`); a trained reference is a folder:

    reference.json         format, name, features, options, artifact + token-table sha256, metrics
    reference.safetensors  the scorer's weights
    split.json             the question ids trained on and held out (qa.training.write_split)
    manifest.json          sha256 of the three files above, checked before loading (commons.integrity)
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from commons.config import from_dict, require_range
from commons.errors import UserError
from commons.integrity import check_finite, verify_manifest, write_manifest
from commons.io import atomic_dir, read_format_json, write_json
from disease_linking.questions import MCQItem
from qa.data import stable_seed
from qa.prefix import CodeSource

FORMAT = "medtok-qa-reference"
CONFIG = "reference.json"
WEIGHTS = "reference.safetensors"
SPLIT = "split.json"
FEATURES = ("medtok", "text")


@dataclass(frozen=True)
class ReferenceKind:
    name: str
    features: str  # one of FEATURES: which vector stands for a code
    summary: str  # one line for --help and reports
    color: str  # its colour in plots


_KINDS = (
    ReferenceKind("ref-medtok", "medtok", "MLP on the stem's and each option's MedTok embeddings (no LLM)", "#6a3d9a"),
    ReferenceKind("ref-text", "text", "the same MLP on text-encoder vectors of the codes' descriptions (no LLM)",
                  "#b15928"),
)
REFERENCES = {k.name: k for k in _KINDS}
GROUP_TITLE = "references, no LLM"  # how reports head the references' rows


def reference_names() -> list[str]:
    return [k.name for k in _KINDS]


def get_reference(name: str) -> ReferenceKind:
    try:
        return REFERENCES[name]
    except KeyError:
        raise UserError(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}") from None


class ReferenceError(UserError):
    """A reference folder is missing, incomplete or damaged."""


@dataclass
class ReferenceOptions:
    """The embeddings-only scorer and its training (CPU, seconds)."""

    hidden: int = 64  # width of the scorer's hidden layer
    dropout: float = 0.1  # dropout after the hidden layer (training only)
    epochs: int = 40  # passes over the training questions at most
    patience: int = 6  # epochs without held-out improvement before stopping (0: run every epoch)
    lr: float = 3e-3  # AdamW learning rate
    weight_decay: float = 1e-3  # AdamW weight decay
    batch_size: int = 32  # questions per optimizer step
    codes_per_mention: int = 1  # best-ranked codes per linked mention (as the fine-tunes' model option)
    # Calibrated confidence a linked code needs (as the fine-tunes' model option).
    min_code_confidence: float = 0.0
    max_codes: int = 8  # codes per field (stem, each option) at most (0: all)

    def __post_init__(self):
        require_range(self, "hidden", 1)
        require_range(self, "dropout", 0.0, 1.0, high_open=True)
        require_range(self, "epochs", 1)
        require_range(self, "patience", 0)
        require_range(self, "lr", 0.0, low_open=True)
        require_range(self, "weight_decay", 0.0)
        require_range(self, "batch_size", 1)
        require_range(self, "codes_per_mention", 1)
        require_range(self, "min_code_confidence", 0.0, 1.0)
        require_range(self, "max_codes", 0)


# ------------------------------------------------------------------------------------ code vectors
class CodeVectors:
    """Code -> vector for one feature kind, computed once per distinct code."""

    def __init__(self, codes: CodeSource, features: str, text_vectors=None):
        if features not in FEATURES:
            raise UserError(f"reference features must be one of {', '.join(FEATURES)}, got {features!r}")
        self.codes, self.features = codes, features
        # texts -> FloatTensor [n, dim]; injectable so tests need no text encoder.
        self._text_vectors = text_vectors
        self._table: dict[str, torch.Tensor] = {}

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self._text_vectors is None:
            self._text_vectors = self.codes.tok.text_encoder().encode_texts  # the artifact's own encoder
        return self._text_vectors(texts)

    def prepare(self, codes: Sequence[str]) -> None:
        """Compute the vectors of ``codes`` not seen yet, in one batch."""
        new = [c for c in dict.fromkeys(codes) if c not in self._table]
        if not new:
            return
        if self.features == "medtok":
            rows = self.codes.embed(new)
        else:
            rows = self._encode_texts([self.codes.tok.describe(c) for c in new]).float()
        self._table.update(zip(new, rows, strict=True))

    def pooled(self, codes: Sequence[str]) -> torch.Tensor | None:
        """L2-normalised mean of the codes' vectors (None for no codes)."""
        if not codes:
            return None
        self.prepare(codes)
        return F.normalize(torch.stack([self._table[c] for c in codes]).mean(0), dim=0)

    @property
    def dim(self) -> int:
        if self.features == "medtok":
            return self.codes.embedding_dim
        return int(self._encode_texts(["dimension probe"]).shape[1])


@dataclass
class QuestionCodes:
    """The codes one question shows this model: the stem's and each option's."""

    stem: list[str]
    options: dict[str, list[str]]  # letter -> codes ([] for an option without codes)

    @property
    def covered(self) -> bool:
        """Whether any option has codes (otherwise the model answers uniformly)."""
        return any(self.options.values())

    @property
    def n_codes(self) -> int:
        """Distinct codes the model reads; 0 when it falls back to uniform."""
        if not self.covered:
            return 0
        return len({*self.stem, *(c for cs in self.options.values() for c in cs)})


def question_codes(item: MCQItem, codes: CodeSource) -> QuestionCodes:
    return QuestionCodes(codes.known_codes(item, fields=["stem"]), codes.option_codes(item))


@dataclass
class Batch:
    stem: torch.Tensor  # [B, D]
    stem_has: torch.Tensor  # [B] bool: the stem has codes
    options: torch.Tensor  # [B, O, D]
    option_has: torch.Tensor  # [B, O] bool: the option has codes
    option_exists: torch.Tensor  # [B, O] bool: the question has this option (questions differ in size)
    answer: torch.Tensor  # [B] long: index of the right option, -1 when unknown


def make_batch(items: Sequence[MCQItem], qcodes: Sequence[QuestionCodes], vectors: CodeVectors, dim: int) -> Batch:
    width = max(len(it.options) for it in items)
    b = Batch(torch.zeros(len(items), dim), torch.zeros(len(items), dtype=torch.bool),
              torch.zeros(len(items), width, dim), torch.zeros(len(items), width, dtype=torch.bool),
              torch.zeros(len(items), width, dtype=torch.bool), torch.full((len(items),), -1, dtype=torch.long))
    for i, (item, qc) in enumerate(zip(items, qcodes, strict=True)):
        stem = vectors.pooled(qc.stem)
        if stem is not None:
            b.stem[i], b.stem_has[i] = stem, True
        for j, letter in enumerate(item.options):
            b.option_exists[i, j] = True
            option = vectors.pooled(qc.options[letter])
            if option is not None:
                b.options[i, j], b.option_has[i, j] = option, True
        if item.answer in item.options:
            b.answer[i] = list(item.options).index(item.answer)
    return b


# ---------------------------------------------------------------------------------------- model
class OptionScorer(nn.Module):
    """score(stem, option) = MLP([s, o, s * o]); "no code" vectors stand in for missing codes."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.no_stem = nn.Parameter(torch.randn(dim) * 0.02)
        self.no_option = nn.Parameter(torch.randn(dim) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, b: Batch) -> torch.Tensor:
        """[B, O] logits, -inf where a question has no such option."""
        stem = torch.where(b.stem_has[:, None], b.stem, self.no_stem)
        options = torch.where(b.option_has[..., None], b.options, self.no_option)
        stem = stem[:, None, :].expand_as(options)
        logits = self.mlp(torch.cat([stem, options, stem * options], dim=-1)).squeeze(-1)
        return logits.masked_fill(~b.option_exists, float("-inf"))


def tie_break_pick(item_id: str, letters: Sequence[str], probs: Sequence[float]) -> str:
    """The most probable letter; among equally probable ones, one drawn from the question id (a
    fixed rule such as "the first" would score whatever the majority letter is worth)."""
    best = max(probs)
    tied = [x for x, p in zip(letters, probs, strict=True) if p >= best - 1e-9]
    return tied[random.Random(stable_seed("reference-tie", item_id)).randrange(len(tied))]


class ReferenceModel:
    """A trained reference: scores questions like a QA checkpoint (eval's Scorer protocol)."""

    def __init__(self, name: str, scorer: OptionScorer, vectors: CodeVectors, dim: int, batch_size: int = 256):
        self.name, self.scorer, self.vectors, self.dim = name, scorer.eval(), vectors, dim
        self.batch_size = batch_size

    def _features(self, items: Sequence[MCQItem]) -> tuple[list[QuestionCodes], Batch]:
        qcodes = [question_codes(it, self.vectors.codes) for it in items]
        self.vectors.prepare([c for qc in qcodes for c in [*qc.stem, *(x for cs in qc.options.values() for x in cs)]])
        return qcodes, make_batch(items, qcodes, self.vectors, self.dim)

    def score(self, items: Sequence[MCQItem]) -> list[dict]:
        """Per question: {"id", "pred", "probs" (letter -> p), "n_codes"} (uniform when uncovered)."""
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = list(items[start:start + self.batch_size])
            out += self.predict(chunk, *self._features(chunk))
        return out

    @torch.no_grad()
    def predict(self, items: Sequence[MCQItem], qcodes: Sequence[QuestionCodes], batch: Batch) -> list[dict]:
        """:meth:`score` on features already built (training scores its held-out slice every epoch)."""
        probs = torch.softmax(self.scorer(batch), dim=-1)
        out = []
        for i, (item, qc) in enumerate(zip(items, qcodes, strict=True)):
            letters = list(item.options)
            p = probs[i, :len(letters)].tolist() if qc.covered else [1.0 / len(letters)] * len(letters)
            out.append({"id": item.id, "pred": tie_break_pick(item.id, letters, p),
                        "probs": dict(zip(letters, p, strict=True)), "n_codes": qc.n_codes})
        return out


# ------------------------------------------------------------------------------------- training
def _metrics(model: ReferenceModel, items: Sequence[MCQItem], features) -> dict:
    """Held-out accuracy (all questions, the uniform fallback included) and NLL (covered ones)."""
    if not items:
        return {"val_acc": None, "val_nll": None, "n_val": 0, "val_covered": 0}
    scores = model.predict(items, *features)
    nll = [-math.log(max(s["probs"][it.answer], 1e-12)) for s, it in zip(scores, items, strict=True) if s["n_codes"]]
    return {"val_acc": sum(s["pred"] == it.answer for s, it in zip(scores, items, strict=True)) / len(items),
            "val_nll": sum(nll) / len(nll) if nll else None, "n_val": len(items), "val_covered": len(nll)}


def _is_better(metrics: dict, best: dict | None) -> bool:
    if best is None:
        return True
    nll, best_nll = metrics["val_nll"] or 0.0, best["val_nll"] or 0.0
    return (metrics["val_acc"], -nll) > (best["val_acc"], -best_nll)


@contextlib.contextmanager
def _one_thread():
    """Matrices this small train faster on one thread: on a busy machine several threads mostly
    wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_reference(name: str, vectors: CodeVectors, train: Sequence[MCQItem], val: Sequence[MCQItem],
                    opts: ReferenceOptions, seed: int) -> tuple[ReferenceModel, dict]:
    """Train on the covered training questions; keep the epoch best on the held-out slice
    (accuracy, then NLL, as the fine-tunes do). Returns the model and a summary."""
    with _one_thread():
        return _train(name, vectors, train, val, opts, seed)


def _train(name: str, vectors: CodeVectors, train: Sequence[MCQItem], val: Sequence[MCQItem],
           opts: ReferenceOptions, seed: int) -> tuple[ReferenceModel, dict]:
    torch.manual_seed(stable_seed("reference", name, seed) % 2**63)
    dim = vectors.dim
    model = ReferenceModel(name, OptionScorer(dim, opts.hidden, opts.dropout), vectors, dim)
    train_codes, train_batch = model._features(train)
    val_features = model._features(val) if val else None
    covered = torch.tensor([qc.covered for qc in train_codes], dtype=torch.bool) & (train_batch.answer >= 0)
    rows = torch.nonzero(covered).flatten()
    optimizer = torch.optim.AdamW(model.scorer.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    order_rng = torch.Generator().manual_seed(stable_seed("reference-order", name, seed) % 2**63)
    best, best_state, bad, history = None, None, 0, []
    for epoch in range(opts.epochs):
        model.scorer.train()
        for chunk in rows[torch.randperm(len(rows), generator=order_rng)].split(opts.batch_size):
            loss = F.cross_entropy(model.scorer(_rows(train_batch, chunk)), train_batch.answer[chunk])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.scorer.eval()
        metrics = {"epoch": epoch + 1, **_metrics(model, val, val_features)}
        history.append(metrics)
        if not val or _is_better(metrics, best):
            best, bad = metrics, 0
            best_state = {k: v.detach().clone() for k, v in model.scorer.state_dict().items()}
        else:
            bad += 1
            if opts.patience and bad >= opts.patience:
                break
    if best_state is not None:
        model.scorer.load_state_dict(best_state)
    summary = {"n_train": len(train), "n_train_covered": len(rows), "n_val": len(val), "best": best,
               "epochs_run": len(history), "history": history}
    return model, summary


def _rows(b: Batch, idx: torch.Tensor) -> Batch:
    return Batch(b.stem[idx], b.stem_has[idx], b.options[idx], b.option_has[idx], b.option_exists[idx], b.answer[idx])


# ------------------------------------------------------------------------------------ the folder
def save_reference(path: str | Path, model: ReferenceModel, opts: ReferenceOptions, seed: int, summary: dict,
                   split: dict) -> Path:
    """Write the folder atomically; ``split`` is its split.json (:func:`qa.training.split_record`)."""
    from safetensors.torch import save_file

    from medtok_core.artifact import table_sha256

    tok_path = model.vectors.codes.tok.path
    config = {"format": FORMAT, "version": 1, "name": model.name, "features": model.vectors.features,
              "seed": seed, "dim": model.dim, "options": asdict(opts),
              "medtok": None if tok_path is None else str(Path(tok_path).resolve()),
              "medtok_token_table_sha256": None if tok_path is None else table_sha256(tok_path),
              "summary": summary}
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().float().contiguous() for k, v in model.scorer.state_dict().items()}, str(tmp / WEIGHTS))
        write_json(tmp / SPLIT, split)
        write_json(tmp / CONFIG, config)
        write_manifest(tmp, (CONFIG, WEIGHTS, SPLIT))
    return path


def is_reference(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def read_reference_config(path: str | Path) -> dict:
    file = Path(path) / CONFIG
    if not file.is_file():
        raise ReferenceError(f"{path} is not a reference folder (no {CONFIG}); pass a folder written by "
                             "`python -m recipes.reference`")
    cfg = read_format_json(file, FORMAT, "reference config", ReferenceError, "train it again")
    for key, kind in (("name", str), ("features", str), ("dim", int), ("options", dict)):
        if not isinstance(cfg.get(key), kind):
            raise ReferenceError(f"{file} lacks {key}; train the reference again")
    get_reference(cfg["name"])
    return cfg


def _checked_artifact(path: str | Path, artifact: str | None, sha: str | None) -> str:
    """The artifact to read codes from: present, and the one the reference was trained with."""
    from medtok_core.artifact import table_sha256

    if not artifact or not Path(artifact).is_dir():
        raise ReferenceError(f"the MedTok artifact {artifact} of reference {path} is missing; pass its new location")
    if sha and table_sha256(artifact) != sha:
        raise ReferenceError(f"MedTok artifact {artifact} differs from the one reference {path} was trained "
                             "with (token_table sha256 mismatch)")
    return artifact


def load_reference(path: str | Path, medtok: str | None = None, text_vectors=None,
                   allow_unverified: bool = False) -> ReferenceModel:
    """A reference folder as a scorer, checked against its manifest first; ``medtok`` overrides the
    artifact path it recorded; ``allow_unverified`` loads one written before manifests (warns)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medtok_core.tokenizer import MedTokTokenizer

    if not is_reference(path):
        read_reference_config(path)  # raises: not a reference folder
    verify_manifest(Path(path), (CONFIG, WEIGHTS, SPLIT), "reference folder", ReferenceError, "train it again",
                    allow_unverified)
    cfg = read_reference_config(path)
    artifact = _checked_artifact(path, medtok or cfg.get("medtok"), cfg.get("medtok_token_table_sha256"))
    opts = from_dict(ReferenceOptions, cfg["options"])
    codes = CodeSource(MedTokTokenizer.from_pretrained(artifact, allow_unverified=allow_unverified), "stem",
                       opts.codes_per_mention, opts.max_codes, min_confidence=opts.min_code_confidence)
    scorer = OptionScorer(cfg["dim"], opts.hidden)
    try:
        weights = load_file(str(Path(path) / WEIGHTS))
        check_finite(weights, Path(path) / WEIGHTS, ReferenceError, "train the reference again")
        scorer.load_state_dict(weights)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ReferenceError(f"{Path(path) / WEIGHTS} is missing or damaged ({str(err).splitlines()[0]}); "
                             "train the reference again") from None
    return ReferenceModel(cfg["name"], scorer, CodeVectors(codes, cfg["features"], text_vectors), cfg["dim"])
