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

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from commons.config import from_dict, require_choice, require_range
from commons.errors import UserError
from disease_linking.questions import LETTERS, MCQItem
from qa import checkpoint, token_cache
from qa.base_model import DEFAULT_BASE_MODEL, DTYPES, load_base_model, resolve_dtype
from qa.data import CODE_FIELDS, shuffle_options, stable_seed
from qa.lora import lean_lora
from qa.prefix import PROJECTORS, CodeSource, pad_prefixes
from qa.prefix_methods import ItemPrefix, PrefixMethod, get_method, method_names
from qa.prompts import SYSTEM_PROMPT, encode_prompt, letter_token_ids, render_prompt


@dataclass
class LoraOptions:
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling alpha
    dropout: float = 0.05  # LoRA dropout
    # None: peft's usual attention projections for the architecture (q_proj/v_proj for LLaMA,
    # c_attn for GPT-2, query_key_value for GPT-NeoX, ...).
    target_modules: list[str] | None = None

    def __post_init__(self):
        require_range(self, "r", 1)
        require_range(self, "alpha", 0, low_open=True)
        require_range(self, "dropout", 0.0, 1.0, high_open=True)


@dataclass
class ModelOptions:
    """How questions become model inputs; saved in every QA checkpoint."""

    base_model: str = DEFAULT_BASE_MODEL  # alias, HF folder or hub id
    allow_download: bool = False  # fetch a hub base_model that is not cached (network); never from a checkpoint
    dtype: str = "auto"  # auto = bf16 on hardware with native bf16, else float32 (see resolve_dtype)
    prefix_mode: str = field(default="medtok", metadata={"choices": method_names})  # a registered prefix method
    medtok: str | None = None  # MedTok artifact folder (needed by every method but none)
    code_fields: str = "stem"  # stem (paper) | stem+options
    codes_per_mention: int = 1  # best-ranked codes taken per linked mention
    # Drop linked codes whose calibrated confidence is below this (0 = keep all; see disease_linking.calibration).
    min_code_confidence: float = 0.0
    max_codes: int = 8  # codes per question at most (0: all)
    projector: str = "linear"  # linear (paper) | mlp
    prefix_tokens: int = 4  # methods that pool codes into a fixed number of tokens (medtok-attn)
    cutoff_len: int = 256  # prompt tokens kept (the last ones; 0: all)
    shuffle_seed: int | None = None  # seed of the shuffled-codes control (None: the run's seed)
    gradient_checkpointing: bool = False  # trade compute for memory
    lora: LoraOptions = field(default_factory=LoraOptions)

    def __post_init__(self):
        get_method(self.prefix_mode)  # unknown names fail when the config is parsed
        require_choice(self, "dtype", DTYPES)
        require_choice(self, "code_fields", CODE_FIELDS)
        require_choice(self, "projector", PROJECTORS)
        require_range(self, "codes_per_mention", 1)
        require_range(self, "max_codes", 0)
        require_range(self, "prefix_tokens", 1)
        require_range(self, "cutoff_len", 16)

    def method(self) -> type[PrefixMethod]:
        return get_method(self.prefix_mode)


@dataclass
class Encoded:
    """One question ready for collation."""

    input_ids: list[int]
    prefix: ItemPrefix
    label: int  # token id of the answer letter, -100 when unknown
    n_options: int
    truncated: bool


def load_medtok(path: str | None, allow_unverified: bool = False):
    if not path:
        return None
    from medtok_core.tokenizer import MedTokTokenizer

    return MedTokTokenizer.from_pretrained(path, allow_unverified=allow_unverified)


def token_table_sha(path: str | None) -> str | None:
    from medtok_core.artifact import table_sha256

    return table_sha256(path) if path else None


# ModelOptions fields that shape weights or compute, never a prompt token (left out of the token
# cache key; base_model is represented by its tokenizer's fingerprint). Any other field is in the key.
_NOT_TOKEN_FIELDS = ("base_model", "allow_download", "dtype", "projector", "prefix_tokens",
                     "gradient_checkpointing", "lora")


class PromptEncoder:
    """Question -> token ids + prefix embeddings + label; and the batch collation."""

    cache_tokens = True  # token ids of encode_many through the Arrow cache (qa.token_cache)

    def __init__(self, tokenizer, method: PrefixMethod, options: ModelOptions):
        self.tokenizer, self.method, self.options = tokenizer, method, options
        self.letter_ids = letter_token_ids(tokenizer, LETTERS)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._artifact_sha: str | None = None

    def encode(self, item: MCQItem) -> Encoded:
        prefix = self.method.item_prefix(item)
        text = render_prompt(self.tokenizer, item, prefix.context)
        ids, truncated = encode_prompt(self.tokenizer, text, self.options.cutoff_len)
        label = self.letter_ids[item.answer] if item.answer else -100
        return Encoded(ids, prefix, label, len(item.options), truncated)

    def encode_many(self, items: list[MCQItem], order: tuple[int, int] | None = None) -> list[Encoded]:
        """``encode`` of each item, its token ids from the Arrow cache when this encoding was done
        before. ``order`` = (seed, epoch): the options are shuffled as training shuffles them."""
        rows = self.token_rows(items, order)
        return [self.from_tokens(self.ordered(it, order), ids, label, truncated)
                for it, ids, label, truncated in zip(items, rows["input_ids"], rows["label"], rows["truncated"],
                                                     strict=True)]

    @staticmethod
    def ordered(item: MCQItem, order: tuple[int, int] | None) -> MCQItem:
        """The item with its options in the order of (seed, epoch); unchanged for None."""
        return item if order is None else shuffle_options(item, stable_seed("options", *order))

    def from_tokens(self, item: MCQItem, input_ids: list[int], label: int, truncated: bool) -> Encoded:
        """The Encoded of cached token ids; the prefix is looked up again (codes, table rows)."""
        return Encoded(input_ids, self.method.item_prefix(item), label, len(item.options), truncated)

    def token_rows(self, items: list[MCQItem], order: tuple[int, int] | None = None) -> dict[str, list]:
        """Columns input_ids, label, truncated of the items (in ``order``), via ``Dataset.map``."""
        from datasets import Features, List, Value

        def tokenize(item: MCQItem) -> dict:
            enc = self.encode(self.ordered(item, order))
            return {"input_ids": enc.input_ids, "label": enc.label, "truncated": enc.truncated}

        features = Features({"input_ids": List(Value("int64")), "label": Value("int64"),
                             "truncated": Value("bool")})
        key = self.cache_key(items, order) if self.cache_tokens else {}
        return token_cache.cached_map(items, tokenize, key, features, self.cache_tokens, len(self.tokenizer))

    def cache_key(self, items: list[MCQItem], order: tuple[int, int] | None) -> dict:
        """What the token ids of ``items`` depend on (qa.token_cache hashes it into the file name)."""
        if self._artifact_sha is None and self.options.medtok:
            self._artifact_sha = token_table_sha(self.options.medtok)
        settings = {k: v for k, v in asdict(self.options).items() if k not in _NOT_TOKEN_FIELDS}
        return {"questions": token_cache.questions_sha(items),
                "seed": None if order is None else order[0], "epoch": None if order is None else order[1],
                "tokenizer": token_cache.tokenizer_fingerprint(self.tokenizer),
                "prompt": token_cache.prompt_fingerprint(),
                "prefix_method": self.options.prefix_mode, "prefix_settings": settings,
                "medtok_artifact": self._artifact_sha, "cutoff_len": self.options.cutoff_len}

    @staticmethod
    def length(encoded: Encoded) -> int:
        """Positions the question occupies in a batch row: prompt tokens + prefix embeddings."""
        n_prefix = 0 if encoded.prefix.embeddings is None else int(encoded.prefix.embeddings.shape[0])
        return len(encoded.input_ids) + n_prefix

    def collate(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        for i, e in enumerate(batch):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(e.input_ids):] = torch.tensor(e.input_ids)
            attention[i, width - len(e.input_ids):] = 1
        prefix_emb, prefix_mask, prefix_tags = pad_prefixes([e.prefix for e in batch],
                                                            max(self.method.embedding_dim, 1))
        n_opt = torch.tensor([e.n_options for e in batch])
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "prefix_emb": prefix_emb,
            "prefix_mask": prefix_mask,
            "prefix_tags": prefix_tags,
            "labels": torch.tensor([e.label for e in batch]),
            "option_mask": torch.arange(len(LETTERS))[None, :] < n_opt[:, None],
        }


class QAModel(nn.Module):
    """Base LM (+ LoRA) + projector. ``forward`` returns the letter loss and the letters' logits.

    Load a trained one with ``QAModel.from_pretrained(folder)`` (a QA checkpoint or its run folder);
    ``model.score(items)`` answers questions; ``print(model)`` summarises what was loaded.
    """

    checkpoint_path: Path | None = None  # the folder it was loaded from (None: built fresh)

    def __init__(self, lm: nn.Module, tokenizer, options: ModelOptions, method: PrefixMethod,
                 projector: nn.Module | None):
        super().__init__()
        self.lm = lm
        self.projector = projector  # the prefix method's trainable module
        self.options = options
        self.encoder = PromptEncoder(tokenizer, method, options)
        self.register_buffer("letter_ids", torch.tensor([self.encoder.letter_ids[x] for x in LETTERS]),
                             persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | Path, medtok: str | None = None, device: str | None = None,
                        allow_download: bool = False, allow_unverified: bool = False) -> QAModel:
        """Restore a QA checkpoint: base model, LoRA adapter and prefix module, verified on the way.

        ``path``: the checkpoint folder or the fine-tuning run folder holding ``best/``.
        ``medtok``: the MedTok artifact's new location if it moved since training.
        ``device``: where to put the model (default: CPU).
        ``allow_download``: fetch a hub base model that is not in the local cache.
        ``allow_unverified``: accept a checkpoint written before manifests were required (warns).
        """
        return load_qa_checkpoint(path, medtok=medtok, device=device, allow_download=allow_download,
                                  allow_unverified=allow_unverified)

    def __repr__(self) -> str:
        """One line per part that matters, instead of nn.Module's full tree (``nn.Module.__repr__(m)``)."""
        lora = getattr(self.lm, "peft_config", {}).get("default") if hasattr(self.lm, "peft_config") else None
        adapter = (f"LoRA r={lora.r} alpha={lora.lora_alpha} on {sorted(lora.target_modules)}" if lora is not None
                   else "none")
        module = "none" if self.projector is None else (
            f"{type(self.projector).__name__} ({sum(p.numel() for p in self.projector.parameters()):,} parameters)")
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        lines = [f"checkpoint={self.checkpoint_path}" if self.checkpoint_path else "checkpoint=None (built fresh)",
                 f"base_model={self.options.base_model!r} ({type(self._causal_lm()).__name__}, dtype "
                 f"{next(self._causal_lm().parameters()).dtype})",
                 f"prefix_mode={self.options.prefix_mode!r}, medtok={self.options.medtok!r}",
                 f"adapter={adapter}", f"prefix_module={module}", f"trainable_parameters={trainable:,}"]
        return "QAModel(\n  " + ",\n  ".join(lines) + "\n)"

    # ---- modules inside the (possibly PEFT-wrapped) LM ------------------------------------------
    def _causal_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def method(self) -> PrefixMethod:
        return self.encoder.method

    def build_inputs(self, input_ids, attention_mask, prefix_emb, prefix_mask, prefix_tags=None):
        """(inputs_embeds, attention_mask, position_ids) with the prefix right before each prompt."""
        causal = self._causal_lm()
        tok = causal.get_input_embeddings()(input_ids)
        mask = attention_mask.bool()
        if self.projector is not None:
            # Run the projector even on an empty prefix so every trainable parameter takes part
            # in each step (DDP/DeepSpeed expect it).
            if prefix_tags is None:
                prefix_tags = torch.zeros_like(prefix_mask, dtype=torch.long)
            pre, pre_mask = self.method.prefix_embeddings(self.projector, prefix_emb, prefix_mask.bool(),
                                                          prefix_tags, tok, mask)
            emb = torch.cat([pre, tok], dim=1)
            mask = torch.cat([pre_mask, mask], dim=1)
            # A stable sort on the mask moves each row's real positions (prefix, then prompt) to
            # the right end, preserving their order: [pad..][prefix][prompt].
            order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
            emb = emb.gather(1, order[..., None].expand(-1, -1, emb.shape[-1]))
            mask = mask.gather(1, order)
        else:
            emb = tok
        position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return emb, mask.long(), position_ids

    def last_hidden(self, input_ids, attention_mask, prefix_emb, prefix_mask, prefix_tags=None) -> torch.Tensor:
        emb, mask, pos = self.build_inputs(input_ids, attention_mask, prefix_emb, prefix_mask, prefix_tags)
        # The transformer body under the LM head (`model` in LLaMA, `transformer` in GPT-2,
        # `gpt_neox` in GPT-NeoX): its final hidden state is what the LM head reads.
        decoder = self._causal_lm().base_model
        out = decoder(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, -1]

    def forward(self, input_ids, attention_mask, prefix_emb, prefix_mask, prefix_tags=None, labels=None,
                option_mask=None):
        h = self.last_hidden(input_ids, attention_mask, prefix_emb, prefix_mask, prefix_tags)
        head = self._causal_lm().get_output_embeddings()
        letter_logits = self._letter_logits(h, head)
        if option_mask is not None:
            letter_logits = letter_logits.masked_fill(~option_mask, float("-inf"))
        loss = None
        if labels is not None:
            # Full-vocabulary cross-entropy of the next token vs the answer letter; fp32 only for
            # these B x V values.
            loss = F.cross_entropy(head(h).float(), labels, ignore_index=-100)
        return {"loss": loss, "letter_logits": letter_logits}

    def _letter_logits(self, h: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """[B, n_letters] float32 logits of the answer letters, computed in float32 from the LM
        head's rows. Read off bf16 logits (8-bit mantissa: steps of 0.06-0.125 at typical logit
        sizes) two letters tied exactly on about a quarter of an untrained model's questions, and
        every tie went to the earliest letter."""
        weight = head.weight.index_select(0, self.letter_ids).float()
        bias = head.bias.index_select(0, self.letter_ids).float() if getattr(head, "bias", None) is not None else None
        return F.linear(h.float(), weight, bias)

    # ---- scoring -------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, items: list[MCQItem], batch_size: int = 16) -> list[dict]:
        """Per question: predicted letter, probability of each option letter, number of prefix codes.

        Questions are batched in order of length (results come back in the given order): a
        question's scores do not depend on its batch (left padding is masked), but the compute
        spent on padding does.
        """
        was_training = self.training
        self.eval()
        device = self.letter_ids.device
        encoded = self.encoder.encode_many(list(items))
        order = sorted(range(len(items)), key=lambda i: self.encoder.length(encoded[i]))
        results: list[dict | None] = [None] * len(items)
        try:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                batch = {k: v.to(device) for k, v in self.encoder.collate([encoded[i] for i in chunk]).items()}
                batch.pop("labels")
                probs = torch.softmax(self(**batch)["letter_logits"], dim=-1).cpu()
                for i, p in zip(chunk, probs, strict=True):
                    letters = list(items[i].options)
                    pl = {x: float(p[LETTERS.index(x)]) for x in letters}
                    results[i] = {"id": items[i].id, "pred": max(letters, key=lambda x: (pl[x], -ord(x))),
                                  "probs": pl, "n_codes": len(encoded[i].prefix.codes)}
        finally:
            self.train(was_training)
        return results

    # ---- saving --------------------------------------------------------------------------------
    def qa_config(self) -> dict:
        opts = asdict(self.options)
        return {"format": checkpoint.FORMAT, "version": 1, **opts,
                "medtok": str(Path(self.options.medtok).resolve()) if self.options.medtok else None,
                "medtok_token_table_sha256": token_table_sha(self.options.medtok),
                "has_adapter": hasattr(self.lm, "peft_config"),
                "system_prompt": SYSTEM_PROMPT,
                "letter_token_ids": self.encoder.letter_ids}

    def save_checkpoint(self, path: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
        """Write the QA checkpoint folder atomically (adapter, prefix module, qa_config.json, extras)."""
        return checkpoint.write_checkpoint(path, self.qa_config(), self.lm, self.projector, extra_files)


def _attach_lora(lm: nn.Module, lora: LoraOptions) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=None if lora.target_modules is None else list(lora.target_modules), task_type="CAUSAL_LM", bias="none")
    try:
        # autocast_adapter_dtype keeps LoRA weights in fp32 over a bf16 base (stable small updates).
        model = get_peft_model(lm, config, autocast_adapter_dtype=True)
    except ValueError as err:
        raise UserError(f"LoRA target modules {lora.target_modules} do not fit this model: "
                          f"{str(err).splitlines()[0]}") from None
    lean_lora(model)  # the adapter's arithmetic in the activations' dtype, fused into the base matmul
    return model


def make_method(options: ModelOptions, allow_unverified: bool = False) -> PrefixMethod:
    """The configured prefix method, with its MedTok codes when it reads the artifact."""
    cls = options.method()
    codes = None
    if cls.needs_artifact and options.medtok:
        codes = CodeSource(load_medtok(options.medtok, allow_unverified), options.code_fields, options.codes_per_mention,
                           options.max_codes, 0 if options.shuffle_seed is None else options.shuffle_seed,
                           options.min_code_confidence)
    return cls(options, codes)  # raises when the method needs an artifact and has none


def resolved_options(options: ModelOptions, seed: int = 0) -> ModelOptions:
    """A copy with every "auto"/None setting replaced by what will run (saved configs say what ran)."""
    return dataclasses.replace(options, dtype=resolve_dtype(options.dtype),
                               shuffle_seed=seed if options.shuffle_seed is None else options.shuffle_seed)


def build_qa_model(options: ModelOptions, lora: bool = True, model_and_tokenizer=None,
                   seed: int = 0, allow_unverified: bool = False) -> QAModel:
    """A fresh QA model: base LM (+ LoRA), prefix module initialised from ``seed`` when the method has one."""
    options = resolved_options(options, seed)
    method = make_method(options, allow_unverified)  # checks method vs artifact before the LM loads
    lm, tokenizer = model_and_tokenizer or load_base_model(options.base_model, options.dtype,
                                                           options.allow_download)
    for p in lm.parameters():
        p.requires_grad_(False)
    projector = None
    if method.trainable:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        projector = method.build_module(method.embedding_dim, lm.config.hidden_size)
        torch.random.set_rng_state(gen_state)
    if options.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        lm = _attach_lora(lm, options.lora)
    return QAModel(lm, tokenizer, options, method, projector)


def zero_shot_model(base_model: str = DEFAULT_BASE_MODEL, prefix_mode: str = "none",
                    medtok: str | None = None, dtype: str = "auto", **option_overrides) -> QAModel:
    """The base model without adapter or prefix module (baselines): a method with nothing to train."""
    if get_method(prefix_mode).trainable:
        untrained = ", ".join(n for n in method_names() if not get_method(n).trainable)
        raise UserError(f"a zero-shot model has no trained prefix module; use prefix_mode {untrained}, "
                          f"not {prefix_mode}")
    options = ModelOptions(base_model=base_model, prefix_mode=prefix_mode, medtok=medtok, dtype=dtype,
                           **option_overrides)
    return build_qa_model(options, lora=False).eval()


def load_qa_checkpoint(path: str | Path, medtok: str | None = None, device: str | None = None,
                       allow_download: bool = False, allow_unverified: bool = False) -> QAModel:
    """Load a QA checkpoint (folder or run folder with ``best/``): base model, LoRA adapter and prefix
    module, each verified (manifest, finiteness, adapter vs base model); ``medtok`` overrides the
    artifact path. The same as :meth:`QAModel.from_pretrained`.

    A checkpoint never causes a network call by itself: its base model is read from local files
    unless the caller passes ``allow_download``. ``allow_unverified`` loads a checkpoint (and
    artifact) written before manifests were required, with a warning."""
    ckpt = checkpoint.verify_checkpoint(path, allow_unverified)
    cfg = checkpoint.read_checkpoint_config(ckpt)
    keys = {f for f in ModelOptions.__dataclass_fields__}
    options = from_dict(ModelOptions, {k: v for k, v in cfg.items() if k in keys})
    if medtok:
        options.medtok = medtok
    if options.medtok and cfg.get("medtok_token_table_sha256"):
        if not Path(options.medtok).is_dir():
            raise UserError(f"the MedTok artifact {options.medtok} of checkpoint {ckpt} is missing; "
                              "pass its new location (medtok=...)")
        if token_table_sha(options.medtok) != cfg["medtok_token_table_sha256"]:
            raise UserError(f"MedTok artifact {options.medtok} differs from the one checkpoint {ckpt} "
                              "was trained with (token_table sha256 mismatch)")
    options.gradient_checkpointing = False
    options.allow_download = allow_download
    # Tensors first (cheap, no model needed): a damaged adapter or module fails before the LM loads.
    module_state = checkpoint.load_module_state(ckpt) if (ckpt / checkpoint.PROJECTOR).exists() else None
    if cfg.get("has_adapter"):
        checkpoint.read_adapter_config(ckpt, cfg)
    model = build_qa_model(options, lora=False, allow_unverified=allow_unverified)
    if cfg.get("has_adapter"):
        model.lm = checkpoint.load_adapter(model.lm, ckpt, cfg)
        lean_lora(model.lm)
    if model.projector is not None:
        if module_state is None:
            module_state = checkpoint.load_module_state(ckpt)  # raises: missing
        try:
            model.projector.load_state_dict(module_state)
        except RuntimeError as err:
            raise checkpoint.CheckpointError(f"{ckpt / checkpoint.PROJECTOR} does not fit prefix method "
                                             f"{options.prefix_mode}: {str(err).splitlines()[0]}") from None
    model.checkpoint_path = ckpt
    if device:
        model.to(device)
    return model.eval()
