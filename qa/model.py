"""The QA model: base causal LM + PEFT LoRA + MedTok prefix projector, letter-logit scoring.

Sequence layout of one row (left padding, so every row ends at the same position):

    [pad ... pad][prefix_1 .. prefix_n][chat-template prompt ... <assistant turn open>]

The prefix embeddings (projected MedTok embeddings) go in through ``inputs_embeds``; padding is
masked and position ids count only real positions, so a row's result does not depend on how
much padding its batch needed. The loss is the cross-entropy of the next token at the last
position against the answer letter (nothing else is supervised); scoring is the softmax of the
option letters' logits at that same position. The LM head is applied to the last hidden state
only: full-sequence vocabulary logits would cost B*T*V memory and, measured here, time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medtok_core.config import from_dict
from medtok_core.errors import MedTokError
from medtok_core.io import atomic_dir, read_json, sha256_file, write_json
from qa.base_model import DEFAULT_BASE_MODEL, load_base_model, resolve_dtype
from qa.mcq import LETTERS, MCQItem
from qa.prefix import EMBEDDING_MODES, CodeSource, ItemPrefix, Projector, pad_prefixes
from qa.prompts import SYSTEM_PROMPT, encode_prompt, letter_token_ids, render_prompt

CHECKPOINT_FORMAT = "medtok-qa-checkpoint"
QA_CONFIG = "qa_config.json"
PROJECTOR_FILE = "projector.safetensors"


@dataclass
class LoraOptions:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelOptions:
    """How questions become model inputs; saved in every QA checkpoint."""

    base_model: str = DEFAULT_BASE_MODEL  # alias, HF folder or hub id
    dtype: str = "auto"  # auto = bf16 on hardware with native bf16, else float32 (see resolve_dtype)
    prefix_mode: str = "medtok"  # none | text | medtok | medtok-mean | shuffled
    medtok: str | None = None  # MedTok artifact folder (needed by all modes but none)
    code_fields: str = "stem"  # stem (paper) | stem+options
    codes_per_mention: int = 1
    max_codes: int = 8
    projector: str = "linear"  # linear (paper) | mlp
    cutoff_len: int = 256
    shuffle_seed: int = 0  # seed of the shuffled-codes control
    gradient_checkpointing: bool = False
    lora: LoraOptions = field(default_factory=LoraOptions)


@dataclass
class Encoded:
    """One question ready for collation."""

    input_ids: list[int]
    prefix: ItemPrefix
    label: int  # token id of the answer letter, -100 when unknown
    n_options: int
    truncated: bool


def load_medtok(path: str | None):
    if not path:
        return None
    from medtok_core.tokenizer import MedTokTokenizer

    return MedTokTokenizer.from_pretrained(path)


def token_table_sha(path: str | None) -> str | None:
    return sha256_file(Path(path) / "token_table.safetensors") if path else None


class PromptEncoder:
    """Question -> token ids + prefix embeddings + label; and the batch collation."""

    def __init__(self, tokenizer, code_source: CodeSource, options: ModelOptions):
        self.tokenizer, self.codes, self.options = tokenizer, code_source, options
        self.letter_ids = letter_token_ids(tokenizer, LETTERS)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, item: MCQItem) -> Encoded:
        prefix = self.codes.prefix(item)
        text = render_prompt(self.tokenizer, item, prefix.context)
        ids, truncated = encode_prompt(self.tokenizer, text, self.options.cutoff_len)
        label = self.letter_ids[item.answer] if item.answer else -100
        return Encoded(ids, prefix, label, len(item.options), truncated)

    def collate(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        for i, e in enumerate(batch):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(e.input_ids):] = torch.tensor(e.input_ids)
            attention[i, width - len(e.input_ids):] = 1
        prefix_emb, prefix_mask = pad_prefixes([e.prefix for e in batch], max(self.codes.embedding_dim, 1))
        n_opt = torch.tensor([e.n_options for e in batch])
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "prefix_emb": prefix_emb,
            "prefix_mask": prefix_mask,
            "labels": torch.tensor([e.label for e in batch]),
            "option_mask": torch.arange(len(LETTERS))[None, :] < n_opt[:, None],
        }


class QAModel(nn.Module):
    """Base LM (+ LoRA) + projector. ``forward`` returns the letter loss and the letters' logits."""

    def __init__(self, lm: nn.Module, tokenizer, options: ModelOptions, code_source: CodeSource,
                 projector: Projector | None):
        super().__init__()
        self.lm = lm
        self.projector = projector
        self.options = options
        self.encoder = PromptEncoder(tokenizer, code_source, options)
        self.register_buffer("letter_ids", torch.tensor([self.encoder.letter_ids[x] for x in LETTERS]),
                             persistent=False)

    # ---- modules inside the (possibly PEFT-wrapped) LM ------------------------------------------
    def _causal_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def code_source(self) -> CodeSource:
        return self.encoder.codes

    def build_inputs(self, input_ids, attention_mask, prefix_emb, prefix_mask):
        """(inputs_embeds, attention_mask, position_ids) with the prefix right before each prompt."""
        causal = self._causal_lm()
        tok = causal.get_input_embeddings()(input_ids)
        mask = attention_mask.bool()
        if self.projector is not None:
            # Run the projector even on an empty prefix so every trainable parameter takes part
            # in each step (DDP/DeepSpeed expect it).
            weight = next(self.projector.parameters())
            pre = self.projector(prefix_emb.to(weight.dtype)).to(tok.dtype)
            emb = torch.cat([pre, tok], dim=1)
            mask = torch.cat([prefix_mask.bool(), mask], dim=1)
            # A stable sort on the mask moves each row's real positions (prefix, then prompt) to
            # the right end, preserving their order: [pad..][prefix][prompt].
            order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
            emb = emb.gather(1, order[..., None].expand(-1, -1, emb.shape[-1]))
            mask = mask.gather(1, order)
        else:
            emb = tok
        position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return emb, mask.long(), position_ids

    def last_hidden(self, input_ids, attention_mask, prefix_emb, prefix_mask) -> torch.Tensor:
        emb, mask, pos = self.build_inputs(input_ids, attention_mask, prefix_emb, prefix_mask)
        decoder = self._causal_lm().model
        out = decoder(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, -1]

    def forward(self, input_ids, attention_mask, prefix_emb, prefix_mask, labels=None, option_mask=None):
        h = self.last_hidden(input_ids, attention_mask, prefix_emb, prefix_mask)
        logits = self._causal_lm().get_output_embeddings()(h)  # [B, V], only the last position
        letter_logits = logits.index_select(1, self.letter_ids).float()
        if option_mask is not None:
            letter_logits = letter_logits.masked_fill(~option_mask, float("-inf"))
        loss = None
        if labels is not None:
            # Full-vocabulary cross-entropy of the next token vs the answer letter; fp32 only for
            # these B x V values.
            loss = F.cross_entropy(logits.float(), labels, ignore_index=-100)
        return {"loss": loss, "letter_logits": letter_logits}

    # ---- scoring -------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, items: list[MCQItem], batch_size: int = 16) -> list[dict]:
        """Per question: predicted letter, probability of each option letter, number of prefix codes."""
        was_training = self.training
        self.eval()
        device = self.letter_ids.device
        results = []
        try:
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                encoded = [self.encoder.encode(it) for it in chunk]
                batch = {k: v.to(device) for k, v in self.encoder.collate(encoded).items()}
                batch.pop("labels")
                probs = torch.softmax(self(**batch)["letter_logits"], dim=-1).cpu()
                for it, enc, p in zip(chunk, encoded, probs, strict=True):
                    letters = list(it.options)
                    pl = {x: float(p[LETTERS.index(x)]) for x in letters}
                    results.append({"id": it.id, "pred": max(letters, key=lambda x: (pl[x], -ord(x))),
                                    "probs": pl, "n_codes": len(enc.prefix.codes)})
        finally:
            self.train(was_training)
        return results

    # ---- saving --------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def qa_config(self) -> dict:
        opts = asdict(self.options)
        return {"format": CHECKPOINT_FORMAT, "version": 1, **opts,
                "medtok": str(Path(self.options.medtok).resolve()) if self.options.medtok else None,
                "medtok_token_table_sha256": token_table_sha(self.options.medtok),
                "has_adapter": hasattr(self.lm, "peft_config"),
                "system_prompt": SYSTEM_PROMPT,
                "letter_token_ids": self.encoder.letter_ids}

    def save_checkpoint(self, path: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
        """Write the QA checkpoint folder atomically (adapter, projector, qa_config.json, extras)."""
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_dir(path) as tmp:
            if hasattr(self.lm, "peft_config"):
                self.lm.save_pretrained(tmp)
            if self.projector is not None:
                state = {k: v.detach().float().contiguous().cpu() for k, v in self.projector.state_dict().items()}
                save_file(state, str(tmp / PROJECTOR_FILE))
            write_json(tmp / QA_CONFIG, self.qa_config())
            for name, src in (extra_files or {}).items():
                if Path(src).is_file():
                    (tmp / name).write_bytes(Path(src).read_bytes())
        return path


def _attach_lora(lm: nn.Module, lora: LoraOptions) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM", bias="none")
    try:
        # autocast_adapter_dtype keeps LoRA weights in fp32 over a bf16 base (stable small updates).
        return get_peft_model(lm, config, autocast_adapter_dtype=True)
    except ValueError as err:
        raise MedTokError(f"LoRA target modules {lora.target_modules} do not fit this model: "
                          f"{str(err).splitlines()[0]}") from None


def _code_source(options: ModelOptions, medtok_tok) -> CodeSource:
    return CodeSource(options.prefix_mode, medtok_tok, options.code_fields, options.codes_per_mention,
                      options.max_codes, options.shuffle_seed)


def build_qa_model(options: ModelOptions, lora: bool = True, model_and_tokenizer=None,
                   seed: int = 0) -> QAModel:
    """A fresh QA model: base LM (+ LoRA), projector initialised from ``seed`` when the mode needs one."""
    options.dtype = resolve_dtype(options.dtype)  # the checkpoint records what was actually used
    medtok_tok = load_medtok(options.medtok) if options.prefix_mode != "none" else None
    code_source = _code_source(options, medtok_tok)  # validates mode vs artifact first
    lm, tokenizer = model_and_tokenizer or load_base_model(options.base_model, options.dtype)
    for p in lm.parameters():
        p.requires_grad_(False)
    projector = None
    if options.prefix_mode in EMBEDDING_MODES:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        projector = Projector(medtok_tok.embedding_dim, lm.config.hidden_size, options.projector)
        torch.random.set_rng_state(gen_state)
    if options.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        lm = _attach_lora(lm, options.lora)
    return QAModel(lm, tokenizer, options, code_source, projector)


def zero_shot_model(base_model: str = DEFAULT_BASE_MODEL, prefix_mode: str = "none",
                    medtok: str | None = None, dtype: str = "auto", **option_overrides) -> QAModel:
    """The base model without adapter or projector (baselines): prefix_mode ``none`` or ``text``."""
    if prefix_mode not in ("none", "text"):
        raise MedTokError(f"a zero-shot model has no trained projector; use prefix_mode none or text, "
                          f"not {prefix_mode}")
    options = ModelOptions(base_model=base_model, prefix_mode=prefix_mode, medtok=medtok, dtype=dtype,
                           **option_overrides)
    return build_qa_model(options, lora=False).eval()


def _checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    for candidate in (path, path / "best"):
        if (candidate / QA_CONFIG).is_file():
            return candidate
    raise MedTokError(f"{path} is not a QA checkpoint (no {QA_CONFIG}); pass the folder written by "
                      "finetune/train.py (its output_dir or output_dir/best)")


def load_qa_checkpoint(path: str | Path, medtok: str | None = None, device: str | None = None) -> QAModel:
    """Load a QA checkpoint (folder or run folder with ``best/``); ``medtok`` overrides the artifact path."""
    from safetensors.torch import load_file

    ckpt = _checkpoint_dir(path)
    cfg = read_json(ckpt / QA_CONFIG)
    if cfg.get("format") != CHECKPOINT_FORMAT:
        raise MedTokError(f"{ckpt}/{QA_CONFIG} is not a QA checkpoint config")
    keys = {f for f in ModelOptions.__dataclass_fields__}
    options = from_dict(ModelOptions, {k: v for k, v in cfg.items() if k in keys})
    if medtok:
        options.medtok = medtok
    if options.medtok and cfg.get("medtok_token_table_sha256"):
        if not Path(options.medtok).is_dir():
            raise MedTokError(f"the MedTok artifact {options.medtok} of checkpoint {ckpt} is missing; "
                              "pass its new location (medtok=...)")
        if token_table_sha(options.medtok) != cfg["medtok_token_table_sha256"]:
            raise MedTokError(f"MedTok artifact {options.medtok} differs from the one checkpoint {ckpt} "
                              "was trained with (token_table sha256 mismatch)")
    options.gradient_checkpointing = False
    model = build_qa_model(options, lora=False)
    if cfg.get("has_adapter"):
        from peft import PeftModel

        model.lm = PeftModel.from_pretrained(model.lm, str(ckpt), is_trainable=False)
    if model.projector is not None:
        model.projector.load_state_dict(load_file(str(ckpt / PROJECTOR_FILE)))
    if device:
        model.to(device)
    return model.eval()
