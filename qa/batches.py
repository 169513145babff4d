"""Training batches: this process's micro-batches of an epoch (length buckets included) and the
backward pass of a batch in row slices (``OptimOptions.max_batch_tokens``)."""

from __future__ import annotations

import contextlib
import math
import random

import torch

from disease_linking.questions import MCQItem
from qa.data import stable_seed
from qa.model import PromptEncoder


class EpochBatches:
    """This process's micro-batches of one epoch, built without accelerate's DataLoader wrapper.

    Order and option permutation depend only on (seed, epoch, question id); each process takes
    every world-th question of the epoch order (wrapped around so all ranks have as many), and
    the tail that does not fill a whole accumulation group is dropped, so optimizer steps align
    with epochs. A resumed run skips the batches already done and sees exactly the batches the
    interrupted one would have. (accelerate's prepared loaders pickle their sampler into the
    resume state and restore a stale copy of the dataset with it.)

    With ``length_buckets`` N > 0 the epoch order is regrouped before it is dealt out: windows
    of N global batches (batch_size x world questions each) are sorted by encoded length and
    cut into global batches, whose order is shuffled again from (seed, epoch). A batch then
    holds prompts of similar length, so little of its compute goes to padding, and every rank's
    batch of a step comes from the same global batch (similar lengths: no rank waits long for
    another).
    """

    def __init__(self, items: list[MCQItem], encoder: PromptEncoder, seed: int, shuffle: bool,
                 batch_size: int, grad_accum: int, rank: int, world: int, length_buckets: int = 0):
        self.items, self.encoder, self.seed, self.shuffle = items, encoder, seed, shuffle
        self.batch_size, self.grad_accum, self.rank, self.world = batch_size, grad_accum, rank, world
        self.length_buckets = length_buckets
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        per_rank = math.ceil(len(self.items) / self.world)
        n = math.ceil(per_rank / self.batch_size)
        return max(self.grad_accum, n - n % self.grad_accum)

    def lengths(self) -> list[int]:
        """Positions each question occupies (prompt + prefix tokens), in the original option order.

        Computed once: shuffling options moves lines of the prompt, which changes its length by a
        token or two at most; sorting only needs it roughly.
        """
        if self._lengths is None:
            self._lengths = [self.encoder.length(e) for e in self.encoder.encode_many(self.items)]
        return self._lengths

    def _bucketed(self, order: list[int], epoch: int) -> list[int]:
        """``order`` regrouped into global batches of similar length, in a shuffled batch order."""
        lengths = self.lengths()
        size = self.batch_size * self.world
        window = size * self.length_buckets
        groups: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: lengths[i])  # stable: ties keep order
            groups += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        # A short last group stays last (it is what __len__ drops first); the full ones are shuffled.
        tail = [groups.pop()] if groups and len(groups[-1]) < size else []
        random.Random(stable_seed("buckets", self.seed, epoch)).shuffle(groups)
        return [i for g in groups + tail for i in g]

    def indices(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.items)))
        random.Random(stable_seed("order", self.seed, epoch)).shuffle(order)
        per_rank = math.ceil(len(order) / self.world)
        order = (order * (self.world + 1))[: per_rank * self.world]
        if self.length_buckets > 0:
            order = self._bucketed(order, epoch)
        mine = order[self.rank::self.world]
        batches = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        while len(batches) < len(self):  # tiny sets: repeat so one accumulation group exists
            batches += batches
        return batches[: len(self)]

    def epoch(self, epoch: int, skip: int = 0):
        # The whole epoch's token ids in one Dataset.map: read from the Arrow cache when this
        # (questions, seed, epoch, tokenizer, prompt, prefix) was tokenized before, e.g. by a rerun.
        # Prefix embeddings are looked up per batch, so an epoch never holds them all at once.
        order = (self.seed, epoch) if self.shuffle else None
        rows = self.encoder.token_rows(self.items, order)
        for idx in self.indices(epoch)[skip:]:
            yield self.encoder.collate([
                self.encoder.from_tokens(self.encoder.ordered(self.items[i], order), rows["input_ids"][i],
                                         rows["label"][i], rows["truncated"][i]) for i in idx])


def row_slices(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """The batch as row slices of at most ``max_tokens`` padded positions each (the whole batch
    when it fits or ``max_tokens`` is 0), each slice's all-padding leading columns dropped."""
    rows, width = batch["input_ids"].shape[0], batch["input_ids"].shape[1] + batch["prefix_mask"].shape[1]
    per_slice = rows if max_tokens <= 0 else max(1, max_tokens // width)
    if per_slice >= rows:
        return [batch]
    slices = []
    for start in range(0, rows, per_slice):
        piece = {k: v[start:start + per_slice] for k, v in batch.items()}
        first = int(piece["attention_mask"].any(dim=0).nonzero()[0])  # left padding: real columns end the row
        piece["input_ids"], piece["attention_mask"] = piece["input_ids"][:, first:], piece["attention_mask"][:, first:]
        slices.append(piece)
    return slices


def backward_in_slices(model, batch: dict[str, torch.Tensor], accelerator, max_tokens: int) -> torch.Tensor:
    """The batch's mean loss, its gradients accumulated (see OptimOptions.max_batch_tokens).
    Each slice's mean loss is weighted by its share of the rows, so the summed gradients are the
    whole batch's; under DDP only the last slice synchronises."""
    slices = row_slices(batch, max_tokens)
    rows, total = batch["input_ids"].shape[0], None
    for i, piece in enumerate(slices):
        last = i == len(slices) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss = model(**piece)["loss"] * (piece["input_ids"].shape[0] / rows)
            accelerator.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    return total
