"""MedTokTokenizer: the public API over a MedTok artifact folder (docs/interfaces.md).

    tok = MedTokTokenizer.from_pretrained("runs/medtok_quick/artifact")
    tok.tokenize("ICD10CM:E11.9")      # ['<t:12>', ..., '<s:801>', ..., '<g:1733>', ...]  (4*K tokens)
    tok.encode(["E11.9", "ATC:A10BA02"])  # LongTensor [2, 4*K] global codebook ids
    tok.embed("E11.9")                 # FloatTensor [1, 4*d], a table lookup
    tok.nearest_codes("E11.9", k=5)    # [("ICD10CM:E11.8", 0.93), ...] by cosine of the embeddings

Artifact folder: ``config.json``, ``model.safetensors``, ``vocab.parquet``,
``token_table.safetensors`` (``ids`` [n, 4, K] int32, ``weights`` [n, 4, K], ``embeddings``
[n, 4*d]). Loading reads only these files; the trained model (and the text encoder) are loaded
lazily, only by :meth:`encode_new` for codes that are not in the table.

Code strings: ``SYSTEM:CODE`` (``ICD10CM:E11.9``) or a bare code resolved across systems when
unambiguous; dotted and undotted forms are equivalent. An unknown code falls back to its nearest
known ancestor (longest known prefix of its undotted form) with a warning.
Token strings are region-tagged: ``<t:i>`` text-specific, ``<s:i>`` shared, ``<g:i>`` graph-specific,
where ``i`` is the global codebook id (regions never overlap).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from commons.errors import UserError
from medtok_core.artifact import load_artifact, load_model_state, write_artifact

REGION_TAGS = ("t", "s", "g")
MAX_CODE_CHARS = 128  # SYSTEM:CODE strings; the longest real ones are under 30 characters


class UnknownCodeWarning(UserWarning):
    """A code was not in the vocabulary and was replaced by its nearest known ancestor."""


def code_key(code: str) -> str:
    """Lookup form of a code: upper case, no dots or spaces (``e11.9`` -> ``E119``)."""
    return code.strip().upper().replace(".", "").replace(" ", "")


@dataclass
class Resolved:
    code_id: int
    system: str
    code: str
    fallback_from: str | None = None


class MedTokTokenizer:
    """Medical codes to MedTok tokens and embeddings, read from an exported artifact's token table.

    Load one with :meth:`from_pretrained` (an artifact folder, or a run folder holding
    ``artifact/``). Every code of the vocabulary has 4*K tokens (K per part: text-specific,
    text-cross, graph-cross, graph-specific), their weights and a 4*d embedding in the table, so
    :meth:`tokenize`, :meth:`encode`, :meth:`token_weights`, :meth:`embed` and
    :meth:`nearest_codes` are lookups; codes outside the table fall back to their nearest known
    ancestor (with an :class:`UnknownCodeWarning`) or are encoded from a description by the
    trained model with :meth:`encode_new`.

    Attributes: ``config`` (the artifact's config.json), ``vocab`` (system, code, description,
    parent; row = code id), ``ids`` [n, 4, K], ``weights`` [n, 4, K], ``embeddings`` [n, 4*d],
    ``path`` (the artifact folder, None when built in memory).
    """

    def __init__(self, config: dict, vocab: pd.DataFrame, table: dict[str, torch.Tensor],
                 path: Path | None = None):
        self.config = config
        self.vocab = vocab.reset_index(drop=True)
        self.ids = table["ids"].to(torch.int32)
        self.weights = table["weights"].float()
        self.embeddings = table["embeddings"].float()
        self.path = path
        self._model = None
        self._model_state: dict[str, torch.Tensor] | None = None
        regions = config["codebook"]["regions"]
        self._region_bounds = np.array([regions["shared"][0], regions["graph"][0]])
        self._build_index()
        self._cache: dict[str, int] = {}

    # ---- loading / saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, allow_unverified: bool = False) -> MedTokTokenizer:
        """Load an artifact folder (or a training run folder holding ``artifact/``), validated against
        its manifest; ``allow_unverified=True`` loads a legacy folder without one (with a warning)."""
        art = load_artifact(path, allow_unverified=allow_unverified)
        return cls(art.config, art.vocab, art.table, art.path)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        table = {"ids": self.ids, "weights": self.weights, "embeddings": self.embeddings}
        return write_artifact(path, self.config, self.vocab, table, self._load_model_state())

    # ---- code resolution -------------------------------------------------------------------
    def _build_index(self) -> None:
        systems = self.vocab["system"].astype(str).to_numpy()
        keys = [code_key(c) for c in self.vocab["code"].astype(str)]
        self._by_system: dict[str, dict[str, int]] = {}
        self._bare: dict[str, list[int]] = {}
        for i, (s, k) in enumerate(zip(systems, keys, strict=True)):
            self._by_system.setdefault(s, {})[k] = i
            self._bare.setdefault(k, []).append(i)
        self._codes = self.vocab["code"].astype(str).tolist()
        self._systems = systems.tolist()
        # Only prefixes up to the longest known key can match: resolution stays linear in the input.
        self._max_key = max(map(len, keys), default=0)

    @property
    def systems(self) -> list[str]:
        return sorted(self._by_system)

    def _split(self, code: str) -> tuple[str | None, str]:
        if not isinstance(code, str):
            raise UserError(f"medical code must be a string, got {type(code).__name__}")
        text = code.strip()
        if not text:
            raise UserError("empty medical code; pass e.g. 'ICD10CM:E11.9'")
        if len(text) > MAX_CODE_CHARS:
            raise UserError(f"medical code of {len(text)} characters is too long (at most {MAX_CODE_CHARS}); "
                              "pass e.g. 'ICD10CM:E11.9'")
        system, sep, rest = text.partition(":")
        if sep:
            system = system.strip().upper()
            if not rest.strip():
                raise UserError(f"empty code after system prefix in {code!r}; pass e.g. 'ICD10CM:E11.9'")
            if system not in self._by_system:
                raise UserError(f"unknown code system {system!r} in {code!r}; this artifact has "
                                  f"{', '.join(self.systems)}")
            return system, rest.strip()
        return None, text

    def _lookup(self, system: str | None, key: str) -> int | None:
        if system is not None:
            return self._by_system[system].get(key)
        hits = self._bare.get(key, [])
        if len(hits) > 1:
            options = ", ".join(f"{self._systems[i]}:{self._codes[i]}" for i in hits)
            raise UserError(f"code {key!r} is ambiguous across systems ({options}); prefix it with its system")
        return hits[0] if hits else None

    def resolve(self, code: str, warn: bool = True) -> Resolved:
        """Vocabulary row of ``code``, falling back to the nearest known ancestor."""
        system, raw = self._split(code)
        key = code_key(raw)
        hit = self._lookup(system, key)
        if hit is not None:
            return Resolved(hit, self._systems[hit], self._codes[hit])
        # ICD and ATC codes extend their ancestors' codes, so the longest known prefix is the
        # nearest known ancestor.
        for cut in range(min(len(key) - 1, self._max_key), 0, -1):
            hit = self._lookup(system, key[:cut])
            if hit is not None:
                if warn:
                    warnings.warn(f"code {code!r} is not in the MedTok vocabulary; using its ancestor "
                                  f"{self._systems[hit]}:{self._codes[hit]}", UnknownCodeWarning, stacklevel=3)
                return Resolved(hit, self._systems[hit], self._codes[hit], fallback_from=code)
        where = f"system {system}" if system else f"any system ({', '.join(self.systems)})"
        raise UserError(f"code {code!r} is not in the MedTok vocabulary for {where} and has no known "
                          "ancestor; encode it from its description with MedTokTokenizer.encode_new")

    def code_id(self, code: str) -> int:
        hit = self._cache.get(code)
        if hit is None:
            hit = self.resolve(code).code_id
            self._cache[code] = hit  # warnings are shown once per distinct string
        return hit

    def code_ids(self, codes: str | Sequence[str]) -> torch.Tensor:
        if isinstance(codes, str):
            codes = [codes]
        return torch.tensor([self.code_id(c) for c in codes], dtype=torch.long)

    def has_code(self, code: str) -> bool:
        """True when ``code`` is in the vocabulary itself (no ancestor fallback)."""
        try:
            system, raw = self._split(code)
            return self._lookup(system, code_key(raw)) is not None
        except UserError:
            return False

    def describe(self, code: str) -> str:
        return str(self.vocab.at[self.code_id(code), "description"])

    # ---- tokens and embeddings ---------------------------------------------------------------
    @property
    def top_k(self) -> int:
        return int(self.config["top_k"])

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def codebook_size(self) -> int:
        return int(self.config["codebook"]["size"])

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        counts = self.vocab["system"].value_counts().sort_index()
        systems = ", ".join(f"{s}={n}" for s, n in counts.items())
        return (f"MedTokTokenizer({len(self)} codes ({systems}), K={self.top_k}, dim={self.embedding_dim}, "
                f"codebook={self.codebook_size}, path={str(self.path) if self.path else None!r})")

    def token_string(self, token_id: int) -> str:
        region = int(np.searchsorted(self._region_bounds, token_id, side="right"))
        return f"<{REGION_TAGS[region]}:{int(token_id)}>"

    def tokenize(self, code: str | Sequence[str]) -> list[str] | list[list[str]]:
        """Region-tagged token strings (4*K per code: text-specific, text-cross, graph-cross, graph-specific)."""
        if isinstance(code, str):
            return [self.token_string(i) for i in self.ids[self.code_id(code)].reshape(-1).tolist()]
        return [self.tokenize(c) for c in code]

    def encode(self, code: str | Sequence[str]) -> torch.Tensor:
        """Global codebook ids: LongTensor [4*K] for one code, [n, 4*K] for a list."""
        if isinstance(code, str):
            return self.ids[self.code_id(code)].reshape(-1).long()
        return self.ids[self.code_ids(code)].flatten(1).long()  # flatten, not reshape(n, -1): n may be 0

    def token_weights(self, code: str | Sequence[str]) -> torch.Tensor:
        """Each id's weight in the code's embedding, aligned with :meth:`encode` ([4*K] or [n, 4*K]).

        A part's quantised vector is the weighted sum of its K codebook vectors, and these are the
        weights (see :mod:`medtok_core.quantizer`). They do not sum to 1 per group in general:
        with ``quantizer: pursuit`` (the shipped configs) they are signed matching-pursuit
        projection coefficients; with ``softmax`` a group sums to 1 before the part gate; with
        ``part_gates`` each group is scaled by its part's learned gate (0 to 2).
        """
        if isinstance(code, str):
            return self.weights[self.code_id(code)].reshape(-1)
        return self.weights[self.code_ids(code)].flatten(1)

    def embed(self, code: str | Sequence[str]) -> torch.Tensor:
        """FloatTensor [n, 4*d] (n = 1 for a single code): a lookup in the exported table."""
        if isinstance(code, str):
            i = self.code_id(code)
            return self.embeddings[i:i + 1].clone()
        return self.embeddings[self.code_ids(code)]

    def nearest_codes(self, vector_or_code: str | torch.Tensor | np.ndarray, k: int = 10,
                      ) -> list[tuple[str, float]]:
        """The ``k`` codes whose table embeddings are closest in cosine to a code or a vector.

        ``vector_or_code``: a code string (resolved like :meth:`embed`; the code itself is left out
        of the answer) or a vector of :attr:`embedding_dim` values (e.g. from :meth:`encode_new`).
        Returns ``[("SYSTEM:CODE", cosine), ...]``, best first.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"nearest_codes: k must be a positive integer, got {k!r}")
        own = None
        if isinstance(vector_or_code, str):
            own = self.code_id(vector_or_code)
            query = self.embeddings[own]
        else:
            query = torch.as_tensor(np.asarray(vector_or_code, dtype=np.float32)).reshape(-1)
            if query.numel() != self.embedding_dim:
                raise UserError(f"nearest_codes: the vector has {query.numel()} values; this tokenizer's "
                                f"embeddings have {self.embedding_dim}")
            if not bool(torch.isfinite(query).all()) or float(query.norm()) == 0.0:
                raise UserError("nearest_codes: the vector must be finite and non-zero")
        scores = torch.nn.functional.cosine_similarity(self.embeddings, query.float().unsqueeze(0), dim=1)
        if own is not None:
            scores[own] = -math.inf
        top = torch.topk(scores, min(k, len(self) - (own is not None)))
        return [(f"{self._systems[i]}:{self._codes[i]}", float(v))
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    # ---- new codes through the trained model -------------------------------------------------
    def _load_model_state(self) -> dict[str, torch.Tensor]:
        if self._model_state is None:
            if self.path is None:
                raise UserError("this tokenizer has no model weights (not loaded from an artifact)")
            self._model_state = load_model_state(self.path)
        return self._model_state

    def model(self):
        """The trained :class:`~medtok_core.model.MedTokModel` (eval mode), loaded on first use."""
        if self._model is None:
            from commons.config import from_dict
            from medtok_core.model import MedTokModel, ModelConfig

            model = MedTokModel(from_dict(ModelConfig, self.config["model"]))
            try:
                model.load_state_dict(self._load_model_state())
            except RuntimeError as err:
                raise UserError(f"{self.path}/model.safetensors does not match config.json: "
                                  f"{str(err).splitlines()[0]}") from None
            self._model = model.eval()
        return self._model

    def text_encoder(self):
        from medtok_core.text_encoder import get_encoder

        return get_encoder(self.config["text_encoder"].get("path"), self.config["text_encoder"].get("dtype", "float32"))

    def encode_new(self, descriptions: Sequence[str], synonyms: Sequence[Sequence[str]] | None = None,
                   neighbors: Sequence[Sequence[int]] | None = None, kg=None,
                   batch_size: int = 1024) -> dict[str, torch.Tensor]:
        """Tokens of codes not in the table, computed with the trained model.

        ``descriptions``: one text per new code; ``synonyms``: optional extra texts per code;
        ``neighbors`` + ``kg``: optional KG node ids each new code links to (their names and types
        become the code's subgraph). Returns ``ids`` [n, 4, K], ``weights`` [n, 4, K],
        ``embeddings`` [n, 4*d].
        """
        from medtok_core.model import build_star_inputs

        if isinstance(descriptions, str):
            descriptions = [descriptions]
        if any(not isinstance(t, str) or not t.strip() for t in descriptions):
            raise UserError("encode_new needs a non-empty description for every new code")
        if neighbors is not None and kg is None:
            raise UserError("encode_new: neighbors are KG node ids, so pass the KnowledgeGraph as kg=")
        model, enc = self.model(), self.text_encoder()
        max_syn = int(self.config["text_encoder"].get("max_synonyms", 0))
        out = {"ids": [], "weights": [], "embeddings": []}
        for s in range(0, len(descriptions), batch_size):
            sl = slice(s, s + batch_size)
            text, mask, g = build_star_inputs(
                enc.encode_texts, list(descriptions[sl]),
                None if synonyms is None else list(synonyms[sl]), max_syn,
                None if neighbors is None else list(neighbors[sl]), kg)
            with torch.inference_mode():
                res = model(text, mask, g)
            out["ids"].append(res.token_ids().to(torch.int32))
            out["weights"].append(res.token_weights())
            out["embeddings"].append(res.embedding())
        return {k: torch.cat(v) for k, v in out.items()}
