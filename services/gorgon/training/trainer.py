"""Medusa-1 head training on cached hidden states: the base model stays frozen and is not even run here.

Head k (0-based) reads the hidden state h_t that produced response token r_j and learns r_{j+1+k}; the loss is
sum_k 0.8^k * CE_k, AdamW at lr ~1e-3 with linear warmup then cosine decay (Medusa's recipe).

With `soft_target_weight` w > 0 each head also learns the base model's whole distribution over the token it
predicts (soft targets, as in Hydra's teacher distillation): the hidden state that produced r_{j+1+k} is in the
data, so the base model's logits there are one product with the frozen lm_head, over the same (sampled)
vocabulary as the head's. The loss becomes sum_k 0.8^k ((1 - w) CE_k + w H(teacher_k, head_k)).

The vocabulary projection dominates the cost on a CPU (576 × 49152 per token per head). With
`train_vocab="sampled"` each step's softmax runs over the tokens that occur as training targets plus a fresh
random sample of the other tokens, whose logits get the usual sampled-softmax correction log(others / sample).
Without those negatives the heads learn to raise tokens they never saw (measured: a quarter to a half of the
held-out argmaxes fell outside the target vocabulary); the held-out report always uses the full vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from gorgon.core.errors import ConfigurationError
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.training.distill import Sequences
from gorgon.training.settings import TrainSettings, TrainVocab

log = logging.getLogger(__name__)

IGNORE = -100
CHECKPOINT_PREFIX = "checkpoint"  # checkpoint-<digest of the training settings and data size>.pt


@dataclass(frozen=True, slots=True)
class Positions:
    """Training positions: hidden [N, H], the token each hidden state produced [N], and targets [N, K]
    (IGNORE past the end of a response). teacher_rows [N, K]: the row of teacher_hidden (the base model's hidden
    states of the whole data) that produced each target, -1 where there is none. response_positions: how many of
    the positions, in order, belong to each response (None: one stream of positions)."""

    hidden: torch.Tensor
    tokens: torch.Tensor
    targets: torch.Tensor
    teacher_rows: torch.Tensor | None = None
    teacher_hidden: torch.Tensor | None = None
    response_positions: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def head_inputs(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """[n, K] the token each head continues under teacher forcing: r_j for head 0, r_{j+k} for head k
        (ids past a response's end are clamped to 0: their targets are IGNORE)."""
        previous = self.targets[rows, :-1].clamp(min=0)
        return torch.cat([self.tokens[rows, None], previous], dim=1)


def head_targets(sequences: Sequences, num_heads: int) -> Positions:
    """Targets r_{j+1+k} for every response position j that has at least one (the last position has none)."""
    hidden_rows, token_rows, target_rows, teacher_rows = [], [], [], []
    start = 0
    for length in sequences.lengths.tolist():
        ids = sequences.response_ids[start : start + length].long()
        padded = torch.cat([ids, torch.full((num_heads + 1,), IGNORE, dtype=torch.long)])
        # targets[j, k] = ids[j + 1 + k], produced by hidden row start + j + 1 + k
        targets = torch.stack([padded[1 + k : 1 + k + length] for k in range(num_heads)], dim=1)
        producers = start + torch.arange(length)[:, None] + 1 + torch.arange(num_heads)[None, :]
        keep = targets[:, 0] != IGNORE
        hidden_rows.append(sequences.hidden[start : start + length][keep])
        token_rows.append(ids[keep])
        target_rows.append(targets[keep])
        teacher_rows.append(torch.where(targets == IGNORE, -1, producers)[keep])
        start += length
    return Positions(
        hidden=torch.cat(hidden_rows),
        tokens=torch.cat(token_rows),
        targets=torch.cat(target_rows),
        teacher_rows=torch.cat(teacher_rows),
        teacher_hidden=sequences.hidden,
        response_positions=tuple(len(rows) for rows in token_rows),
    )


def head_logits(
    heads: MedusaHeads,
    projection: nn.Module,
    embed_tokens: nn.Module | None,
    positions: Positions,
    rows: torch.Tensor | slice,
) -> torch.Tensor:
    """Teacher-forced logits of every head at positions[rows]: [K, n, V']."""
    hidden = positions.hidden[rows].float().unsqueeze(0)  # [1, n, H]
    embeddings = None
    if heads.recurrent:
        if embed_tokens is None:
            raise ConfigurationError("recurrent heads need the base model's input embeddings")
        embeddings = embed_tokens(positions.head_inputs(rows)).float().permute(1, 0, 2).unsqueeze(1)
    return heads(hidden, projection, embeddings)[:, 0]


def training_vocabulary(positions: Positions, vocab_size: int, train_vocab: TrainVocab) -> torch.Tensor:
    """Token ids every training softmax includes (sorted): all of them, or those that occur as targets."""
    if train_vocab == "full":
        return torch.arange(vocab_size)
    valid = positions.targets[positions.targets != IGNORE]
    return torch.unique(valid)


def complement(vocabulary: torch.Tensor, vocab_size: int) -> torch.Tensor:
    outside = torch.ones(vocab_size, dtype=torch.bool)
    outside[vocabulary] = False
    return outside.nonzero()[:, 0]


def remap_targets(targets: torch.Tensor, vocabulary: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Targets as indices into `vocabulary` (IGNORE stays IGNORE)."""
    index_of = torch.full((vocab_size,), IGNORE, dtype=torch.long)
    index_of[vocabulary] = torch.arange(vocabulary.numel())
    remapped = torch.where(targets == IGNORE, IGNORE, index_of[targets.clamp(min=0)])
    if bool(((remapped == IGNORE) & (targets != IGNORE)).any()):
        raise ConfigurationError("a training target lies outside the training vocabulary")
    return remapped


def new_heads(settings: TrainSettings, lm_head: nn.Linear, hidden_size: int, vocab_size: int) -> MedusaHeads:
    """Fresh heads (seeded); own projections start as copies of the base lm_head, as in Medusa."""
    torch.manual_seed(settings.seed)
    heads = MedusaHeads(
        hidden_size,
        vocab_size,
        settings.num_heads,
        settings.num_layers,
        own_lm_heads=settings.own_lm_heads,
        recurrent=settings.recurrent,
    )
    if settings.own_lm_heads:
        with torch.no_grad():
            for head in heads.heads:
                head_projection(head).weight.copy_(lm_head.weight)
    return heads


def head_projection(head: nn.Module) -> nn.Linear:
    """The vocabulary projection of a head with its own lm_head: the last module of its Sequential."""
    return cast(nn.Linear, cast(nn.Sequential, head)[-1])


def sampled_projection(
    lm_head: nn.Linear,
    vocabulary: torch.Tensor,
    others: torch.Tensor,
    num_samples: int,
    generator: torch.Generator,
) -> nn.Linear:
    """A frozen slice of the lm_head: rows `vocabulary` first, then `num_samples` random rows of `others`.

    The bias holds the sampled-softmax correction: 0 for the vocabulary, log(|others| / samples) for the
    sampled rows, so that they stand for all the tokens they were drawn from.
    """
    sampled = others[torch.randperm(others.numel(), generator=generator)[:num_samples]]
    rows = torch.cat([vocabulary, sampled])
    bias = torch.zeros(rows.numel())
    if sampled.numel():
        bias[vocabulary.numel() :] = math.log(others.numel() / sampled.numel())
    projection = nn.Linear(lm_head.weight.shape[1], rows.numel())
    projection.weight = nn.Parameter(lm_head.weight.detach()[rows].float(), requires_grad=False)
    projection.bias = nn.Parameter(bias, requires_grad=False)
    return projection


def weighted_loss(
    logits: torch.Tensor, targets: torch.Tensor, decay: float
) -> tuple[torch.Tensor, list[float]]:
    """logits: [K, N, V], targets: [N, K] -> (sum_k decay^k CE_k, per-head CE)."""
    total = logits.new_zeros(())
    per_head = []
    for k in range(logits.shape[0]):
        head_loss = functional.cross_entropy(logits[k], targets[:, k], ignore_index=IGNORE)
        total = total + decay**k * head_loss
        per_head.append(head_loss.item())
    return total, per_head


def soft_target_loss(
    logits: torch.Tensor, teacher: nn.Module, positions: Positions, rows: torch.Tensor, decay: float
) -> torch.Tensor:
    """sum_k decay^k cross-entropy of head k's logits [K, n, V'] against the base model's distribution where its
    target was produced (`teacher`: the base lm_head over the same V' tokens as the heads' projection)."""
    if positions.teacher_rows is None or positions.teacher_hidden is None:
        raise ConfigurationError("soft targets need the hidden states that produced the targets")
    producers = positions.teacher_rows[rows]  # [n, K]
    with torch.no_grad():
        probabilities = functional.softmax(
            teacher(positions.teacher_hidden[producers.clamp(min=0)].float()), dim=-1
        )  # [n, K, V']
    total = logits.new_zeros(())
    for k in range(logits.shape[0]):
        valid = producers[:, k] >= 0
        if bool(valid.any()):
            log_probabilities = functional.log_softmax(logits[k][valid], dim=-1)
            head_loss = -(probabilities[valid, k] * log_probabilities).sum(-1).mean()
            total = total + decay**k * head_loss
    return total


def learning_rate_at(step: int, total_steps: int, settings: TrainSettings) -> float:
    warmup = max(1, int(settings.warmup_ratio * total_steps))
    if step < warmup:
        return settings.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return settings.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_order(num_positions: int, batch_tokens: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch's batches: a permutation fixed by (seed, epoch), so a resumed run sees the same order."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    permutation = torch.randperm(num_positions, generator=generator)
    return list(permutation.split(batch_tokens))


def planned_batches(num_positions: int, settings: TrainSettings) -> Iterator[torch.Tensor]:
    """Every batch of the run in order; the last epoch may be partial (fractional `epochs`)."""
    per_epoch = math.ceil(num_positions / settings.batch_tokens)
    total = math.ceil(settings.epochs * per_epoch)
    for step in range(total):
        epoch, index = divmod(step, per_epoch)
        if index == 0:
            batches = batch_order(num_positions, settings.batch_tokens, settings.seed, epoch)
        yield batches[index]


def total_steps(num_positions: int, settings: TrainSettings) -> int:
    return math.ceil(settings.epochs * math.ceil(num_positions / settings.batch_tokens))


def checkpoint_name(settings: TrainSettings, num_positions: int) -> str:
    """One checkpoint per training recipe and data size, so that runs of different recipes on the same data, or of
    one recipe on more data (a larger --num-prompts reuses the shards of a smaller one), each resume their own."""
    key = {"settings": asdict(settings), "num_positions": num_positions}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{CHECKPOINT_PREFIX}-{digest}.pt"


@dataclass
class TrainResult:
    heads: MedusaHeads
    steps: int
    final_loss: float
    final_head_losses: list[float]


class Trainer:
    """Trains `heads` on `positions`, checkpointing to `work_dir` and resuming from it."""

    def __init__(
        self,
        settings: TrainSettings,
        heads: MedusaHeads,
        lm_head: nn.Linear,
        positions: Positions,
        work_dir: Path,
        embed_tokens: nn.Module | None = None,
    ) -> None:
        vocab_size = int(lm_head.weight.shape[0])
        if settings.own_lm_heads and settings.train_vocab != "full":
            raise ConfigurationError(
                "heads with their own projections train over the full vocabulary: --train-vocab full"
            )
        self.settings = settings
        self.heads = heads
        self.vocabulary = training_vocabulary(positions, vocab_size, settings.train_vocab)
        self.lm_head = lm_head
        self.embed_tokens = embed_tokens
        self.others = complement(self.vocabulary, vocab_size)
        self.positions = positions
        self.hidden = positions.hidden
        self.targets = remap_targets(positions.targets, self.vocabulary, vocab_size)
        self.optimizer = torch.optim.AdamW(
            [parameter for parameter in heads.parameters() if parameter.requires_grad],
            lr=settings.learning_rate,
            weight_decay=0.0,
        )
        self.checkpoint_path = work_dir / checkpoint_name(settings, len(positions))
        self.total_steps = total_steps(len(positions), settings)
        self.step = 0

    def _save_checkpoint(self) -> None:
        state = {
            "settings": asdict(self.settings),
            "num_positions": int(self.hidden.shape[0]),
            "step": self.step,
            "heads": self.heads.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.rename(self.checkpoint_path)

    def resume(self) -> bool:
        """Load the checkpoint when it was made by the same settings on the same data; True when resumed."""
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if state["settings"] != asdict(self.settings) or state["num_positions"] != int(self.hidden.shape[0]):
            raise ConfigurationError(
                f"{self.checkpoint_path} belongs to a run with other data (or other settings); "
                f"delete it or use another --work-dir"
            )
        self.heads.load_state_dict(state["heads"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        log.info("resumed head training at step %d of %d", self.step, self.total_steps)
        return True

    def _projection(self) -> nn.Module:
        """This step's vocabulary projection; the negatives are fixed by (seed, step), so resuming repeats them."""
        if self.settings.train_vocab == "full":
            return self.lm_head
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + self.step)
        return sampled_projection(
            self.lm_head, self.vocabulary, self.others, self.settings.negative_samples, generator
        )

    def train_step(self, batch: torch.Tensor) -> tuple[float, list[float]]:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(self.step, self.total_steps, self.settings)
        projection = self._projection()
        logits = head_logits(self.heads, projection, self.embed_tokens, self.positions, batch)
        loss, per_head = weighted_loss(logits, self.targets[batch], self.settings.loss_decay)
        weight = self.settings.soft_target_weight
        if weight > 0:  # the projection is the base lm_head over the training vocabulary in both modes
            soft = soft_target_loss(logits, projection, self.positions, batch, self.settings.loss_decay)
            loss = (1.0 - weight) * loss + weight * soft
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item(), per_head

    def run(self) -> TrainResult:
        self.heads.train()
        loss = float("nan")
        per_head: list[float] = []
        batches = planned_batches(int(self.hidden.shape[0]), self.settings)
        with tqdm(total=self.total_steps, initial=self.step, desc="training heads", unit="step") as progress:
            for step, batch in enumerate(batches):
                if step < self.step:
                    continue
                loss, per_head = self.train_step(batch)
                progress.update()
                progress.set_postfix(loss=f"{loss:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.1e}")
                if self.step % self.settings.checkpoint_every == 0 or self.step == self.total_steps:
                    self._save_checkpoint()
        self.heads.eval()
        return TrainResult(self.heads, self.step, loss, per_head)
