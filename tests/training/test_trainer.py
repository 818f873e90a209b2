from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gorgon.core.errors import ConfigurationError
from gorgon.training.base_model import BaseModel
from gorgon.training.distill import Sequences
from gorgon.training.settings import TrainSettings
from gorgon.training.trainer import (
    IGNORE,
    Trainer,
    head_logits,
    head_targets,
    learning_rate_at,
    new_heads,
    planned_batches,
    soft_target_loss,
    weighted_loss,
)

SETTINGS = TrainSettings(num_heads=3, epochs=6, batch_tokens=64, learning_rate=1e-2, checkpoint_every=5)


def _trainer(base: BaseModel, sequences: Sequences, settings: TrainSettings, work_dir: Path) -> Trainer:
    positions = head_targets(sequences, settings.num_heads)
    heads = new_heads(settings, base.lm_head, base.hidden_size, base.vocab_size)
    embed_tokens = base.embed_tokens if settings.recurrent else None
    return Trainer(settings, heads, base.lm_head, positions, work_dir, embed_tokens)


def _full_loss(trainer: Trainer, base: BaseModel, sequences: Sequences) -> float:
    positions = head_targets(sequences, trainer.settings.num_heads)
    with torch.no_grad():
        logits = head_logits(trainer.heads, base.lm_head, trainer.embed_tokens, positions, slice(None))
        return weighted_loss(logits, positions.targets, trainer.settings.loss_decay)[0].item()


def test_head_k_targets_the_token_k_plus_two_after_the_hidden_state() -> None:
    sequences = Sequences(
        hidden=torch.arange(5, dtype=torch.float16).unsqueeze(1),
        response_ids=torch.tensor([10, 11, 12, 13, 14], dtype=torch.int32),
        lengths=torch.tensor([5], dtype=torch.int32),
    )
    positions = head_targets(sequences, num_heads=2)
    # hidden j produced token j; head 0 learns token j+1, head 1 token j+2; the last position has no target
    assert positions.hidden[:, 0].tolist() == [0, 1, 2, 3]
    assert positions.targets.tolist() == [[11, 12], [12, 13], [13, 14], [14, IGNORE]]


def test_targets_never_cross_from_one_response_into_the_next() -> None:
    sequences = Sequences(
        hidden=torch.zeros(5, 1, dtype=torch.float16),
        response_ids=torch.tensor([1, 2, 3, 7, 8], dtype=torch.int32),
        lengths=torch.tensor([3, 2], dtype=torch.int32),
    )
    positions = head_targets(sequences, num_heads=2)
    assert positions.targets.tolist() == [[2, 3], [3, IGNORE], [8, IGNORE]]
    assert positions.response_positions == (2, 1)  # the tree search walks each response on its own


def test_soft_targets_come_from_the_hidden_state_that_produced_each_target() -> None:
    sequences = Sequences(
        hidden=torch.arange(5, dtype=torch.float16).unsqueeze(1),
        response_ids=torch.tensor([1, 2, 3, 7, 8], dtype=torch.int32),
        lengths=torch.tensor([3, 2], dtype=torch.int32),
    )
    positions = head_targets(sequences, num_heads=2)
    # targets [[2, 3], [3, -], [8, -]]: token 2 was produced by hidden row 1, token 3 by row 2, token 8 by row 4
    assert positions.teacher_rows.tolist() == [[1, 2], [2, -1], [4, -1]]
    assert positions.teacher_hidden[positions.teacher_rows[0], 0].tolist() == [1.0, 2.0]


def test_the_soft_target_loss_is_least_where_the_heads_match_the_base_model(
    tiny_base: BaseModel, tiny_sequences: Sequences
) -> None:
    positions = head_targets(tiny_sequences, 2)
    rows = torch.arange(len(positions))
    lm_head = tiny_base.lm_head
    teacher_logits = lm_head(positions.teacher_hidden[positions.teacher_rows.clamp(min=0)].float())
    matching = teacher_logits.permute(1, 0, 2).detach()  # [K, n, V]: each head exactly the base model
    for other in (torch.zeros_like(matching), matching * 0.5, matching.roll(1, dims=-1)):
        assert soft_target_loss(matching, lm_head, positions, rows, 0.8) < soft_target_loss(
            other, lm_head, positions, rows, 0.8
        )


def test_recurrent_heads_continue_the_true_tokens_under_teacher_forcing() -> None:
    sequences = Sequences(
        hidden=torch.zeros(4, 1, dtype=torch.float16),
        response_ids=torch.tensor([10, 11, 12, 13], dtype=torch.int32),
        lengths=torch.tensor([4], dtype=torch.int32),
    )
    positions = head_targets(sequences, num_heads=3)
    # head 0 continues the token its hidden state produced, head k the true token k after it
    assert positions.head_inputs(slice(None)).tolist() == [[10, 11, 12], [11, 12, 13], [12, 13, 0]]
    assert positions.targets.tolist() == [[11, 12, 13], [12, 13, IGNORE], [13, IGNORE, IGNORE]]


@pytest.mark.parametrize(
    ("own_lm_heads", "train_vocab", "recurrent"),
    [(False, "sampled", False), (False, "full", False), (True, "full", False), (False, "sampled", True)],
)
def test_a_few_steps_reduce_the_loss(
    tiny_base: BaseModel,
    tiny_sequences: Sequences,
    tmp_path: Path,
    own_lm_heads: bool,
    train_vocab: str,
    recurrent: bool,
) -> None:
    settings = replace(SETTINGS, own_lm_heads=own_lm_heads, train_vocab=train_vocab, recurrent=recurrent)
    trainer = _trainer(tiny_base, tiny_sequences, settings, tmp_path)
    before = _full_loss(trainer, tiny_base, tiny_sequences)
    trainer.run()
    after = _full_loss(trainer, tiny_base, tiny_sequences)
    assert after < 0.8 * before


@pytest.mark.parametrize("recurrent", [False, True])
def test_a_few_steps_with_soft_targets_bring_the_heads_towards_the_base_model(
    tiny_base: BaseModel, tiny_sequences: Sequences, tmp_path: Path, recurrent: bool
) -> None:
    """The soft loss falls towards its least value, the base model's own entropy (reached by matching it)."""
    settings = replace(SETTINGS, soft_target_weight=1.0, recurrent=recurrent)
    trainer = _trainer(tiny_base, tiny_sequences, settings, tmp_path)
    positions, lm_head = trainer.positions, tiny_base.lm_head
    rows = torch.arange(len(positions))
    with torch.no_grad():
        teacher = lm_head(positions.teacher_hidden[positions.teacher_rows.clamp(min=0)].float())
        least = soft_target_loss(teacher.permute(1, 0, 2), lm_head, positions, rows, settings.loss_decay)

    def excess() -> float:
        with torch.no_grad():
            logits = head_logits(trainer.heads, lm_head, trainer.embed_tokens, positions, rows)
            return (soft_target_loss(logits, lm_head, positions, rows, settings.loss_decay) - least).item()

    before = excess()
    trainer.run()
    assert 0 <= excess() < 0.5 * before


def test_half_soft_targets_still_learn_the_greedy_tokens(
    tiny_base: BaseModel, tiny_sequences: Sequences, tmp_path: Path
) -> None:
    trainer = _trainer(tiny_base, tiny_sequences, replace(SETTINGS, soft_target_weight=0.5), tmp_path)
    before = _full_loss(trainer, tiny_base, tiny_sequences)
    trainer.run()
    assert _full_loss(trainer, tiny_base, tiny_sequences) < 0.8 * before


def test_the_base_model_stays_frozen(tiny_base: BaseModel, tiny_sequences: Sequences, tmp_path: Path) -> None:
    weights_before = {name: tensor.clone() for name, tensor in tiny_base.model.state_dict().items()}
    _trainer(tiny_base, tiny_sequences, replace(SETTINGS, epochs=1), tmp_path).run()
    for name, tensor in tiny_base.model.state_dict().items():
        assert torch.equal(tensor, weights_before[name]), name


def test_training_is_deterministic_and_resumes_to_the_same_heads(
    tiny_base: BaseModel, tiny_sequences: Sequences, tmp_path: Path
) -> None:
    uninterrupted = _trainer(tiny_base, tiny_sequences, SETTINGS, tmp_path / "a").run().heads
    interrupted = _trainer(tiny_base, tiny_sequences, SETTINGS, tmp_path / "b")
    (tmp_path / "b").mkdir()
    batches = planned_batches(len(interrupted.hidden), SETTINGS)
    for _ in range(SETTINGS.checkpoint_every):
        interrupted.train_step(next(batches))
    interrupted._save_checkpoint()
    resumed = _trainer(tiny_base, tiny_sequences, SETTINGS, tmp_path / "b")
    assert resumed.resume()
    assert resumed.step == SETTINGS.checkpoint_every
    final = resumed.run().heads
    for (name, tensor), (_, other) in zip(
        uninterrupted.state_dict().items(), final.state_dict().items(), strict=True
    ):
        assert torch.equal(tensor, other), name


def test_runs_of_other_settings_keep_their_own_checkpoints(
    tiny_base: BaseModel, tiny_sequences: Sequences, tmp_path: Path
) -> None:
    _trainer(tiny_base, tiny_sequences, replace(SETTINGS, epochs=0.5), tmp_path).run()
    other = _trainer(tiny_base, tiny_sequences, replace(SETTINGS, epochs=1, seed=7), tmp_path)
    assert not other.resume()  # a fresh start, the first run's checkpoint untouched
    assert _trainer(tiny_base, tiny_sequences, replace(SETTINGS, epochs=0.5), tmp_path).resume()


def _fewer(sequences: Sequences) -> Sequences:
    """The same responses, the last one 5 tokens shorter."""
    return Sequences(
        hidden=sequences.hidden[:-5],
        response_ids=sequences.response_ids[:-5],
        lengths=torch.cat([sequences.lengths[:-1], sequences.lengths[-1:] - 5]),
    )


def test_one_recipe_on_more_data_keeps_its_own_checkpoint(
    tiny_base: BaseModel, tiny_sequences: Sequences, tmp_path: Path
) -> None:
    settings = replace(SETTINGS, epochs=0.5)
    _trainer(tiny_base, _fewer(tiny_sequences), settings, tmp_path).run()
    assert not _trainer(tiny_base, tiny_sequences, settings, tmp_path).resume()  # more data: a fresh start
    assert _trainer(tiny_base, _fewer(tiny_sequences), settings, tmp_path).resume()


def test_a_checkpoint_of_other_data_is_refused(
    tiny_base: BaseModel, tiny_sequences: Sequences, tmp_path: Path
) -> None:
    settings = replace(SETTINGS, epochs=0.5)
    smaller = _trainer(tiny_base, _fewer(tiny_sequences), settings, tmp_path)
    smaller.run()
    larger = _trainer(tiny_base, tiny_sequences, settings, tmp_path)
    # the smaller run's checkpoint under the larger run's name
    larger.checkpoint_path.write_bytes(smaller.checkpoint_path.read_bytes())
    with pytest.raises(ConfigurationError, match="other data"):
        larger.resume()


def test_own_projections_need_the_full_vocabulary(
    tiny_base: BaseModel, tiny_sequences: Sequences, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="full vocabulary"):
        _trainer(tiny_base, tiny_sequences, replace(SETTINGS, own_lm_heads=True), tmp_path)


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    settings = TrainSettings(learning_rate=1e-3, warmup_ratio=0.1)
    rates = [learning_rate_at(step, 100, settings) for step in range(100)]
    assert rates[0] < rates[5] < rates[9] == pytest.approx(1e-3)
    assert rates[10] > rates[50] > rates[99]
    assert rates[99] < 1e-5
