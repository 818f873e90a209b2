from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gorgon.engine.drafting.checkpoint import (
    DRAFT_VOCABULARY_FILE,
    HEADS_TREE_FILE,
    load_medusa_heads,
    save_medusa_heads,
)
from gorgon.engine.tree import build_tree_buffers
from gorgon.training.base_model import BaseModel
from gorgon.training.distill import generate_greedy
from gorgon.training.pipeline import (
    REPORT_NAME,
    draft_coverage,
    export_with_own_projections,
    most_frequent_tokens,
    retune_tree,
    run_training,
)
from gorgon.training.settings import DataSettings, RunSettings, TrainSettings
from gorgon.training.trainer import Trainer, head_targets, new_heads

TINY_RUN = RunSettings(
    work_dir=Path("unused"),
    output=Path("unused"),
    data=DataSettings(num_prompts=6, held_out_prompts=3, max_new_tokens=24, generation_batch_size=3),
    train=TrainSettings(num_heads=3, epochs=2, batch_tokens=32, learning_rate=1e-2),
    tree_max_nodes=12,
)


def _run(tiny_base: BaseModel, tmp_path: Path, **changes) -> tuple[RunSettings, dict]:
    settings = replace(TINY_RUN, work_dir=tmp_path / "work", output=tmp_path / "heads", **changes)
    return settings, run_training(settings, base=tiny_base)


def _state(heads) -> dict[str, torch.Tensor]:
    return heads.state_dict_faster_decoding()


@pytest.fixture(scope="module")
def trained(tiny_base: BaseModel, tmp_path_factory: pytest.TempPathFactory):
    settings = TrainSettings(num_heads=3, epochs=1, batch_tokens=32)
    sequences = generate_greedy(tiny_base, [[5, 6, 7, 8], [9, 10, 11]], max_new_tokens=30)
    positions = head_targets(sequences, settings.num_heads)
    heads = new_heads(settings, tiny_base.lm_head, tiny_base.hidden_size, tiny_base.vocab_size)
    work_dir = tmp_path_factory.mktemp("trained")
    return Trainer(settings, heads, tiny_base.lm_head, positions, work_dir).run().heads, positions


def test_the_pipeline_writes_heads_tree_and_report(tiny_base: BaseModel, tmp_path: Path) -> None:
    settings, report = _run(tiny_base, tmp_path, export_own_projections=tmp_path / "full")
    heads = load_medusa_heads(settings.output)
    assert (heads.num_heads, heads.own_lm_heads) == (3, False)
    assert load_medusa_heads(tmp_path / "full").own_lm_heads
    written = json.loads((settings.output / REPORT_NAME).read_text())
    assert written == report
    assert [head["head"] for head in report["held_out_accuracy"]] == [0, 1, 2]
    assert report["held_out_accuracy"][0]["medusa_vicuna_7b_top1"] == 0.56
    assert report["data"]["train_responses"] == 6
    assert report["data"]["held_out_responses"] == 3
    choices = json.loads((settings.output / HEADS_TREE_FILE).read_text())
    assert choices == report["tree"]["medusa_choices"]
    if choices:
        assert build_tree_buffers([tuple(path) for path in choices]).num_nodes == len(choices) + 1


def test_a_repeated_run_reuses_data_and_checkpoint_and_gives_the_same_heads(
    tiny_base: BaseModel, tmp_path: Path
) -> None:
    settings, first = _run(tiny_base, tmp_path)
    weights = (settings.output / "medusa_lm_head.safetensors").read_bytes()
    _, second = _run(tiny_base, tmp_path)
    assert (settings.output / "medusa_lm_head.safetensors").read_bytes() == weights
    assert second["held_out_accuracy"] == first["held_out_accuracy"]


def test_the_tree_is_regrown_for_shipped_heads_without_training_them(
    tiny_base: BaseModel, tmp_path: Path
) -> None:
    settings, trained_report = _run(tiny_base, tmp_path)
    weights = (settings.output / "medusa_lm_head.safetensors").read_bytes()
    # forwards that cost ten times more per extra node: the regrown tree is smaller
    costly = replace(settings, cost_table=((1, 10.0), (2, 100.0), (64, 6400.0)))
    report = retune_tree(costly, base=tiny_base)
    assert (settings.output / "medusa_lm_head.safetensors").read_bytes() == weights
    assert report["data"] == trained_report["data"]  # the training run's record is kept
    assert (
        report["held_out_accuracy"] == trained_report["held_out_accuracy"]
    )  # same heads, same held-out data
    assert report["tree"]["cost_table_ms"] == [[1, 10.0], [2, 100.0], [64, 6400.0]]
    assert report["tree"]["best_nodes"] < trained_report["tree"]["best_nodes"]
    assert json.loads((settings.output / HEADS_TREE_FILE).read_text()) == report["tree"]["medusa_choices"]
    assert json.loads((settings.output / REPORT_NAME).read_text()) == report


def test_a_text_file_can_replace_the_prompt_set(tiny_base: BaseModel, tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    data = DataSettings(text_file=text, chunk_tokens=64, generation_batch_size=4)
    _, report = _run(tiny_base, tmp_path, data=data)
    # 1800 characters = 28 chunks of 64 tokens; the last 2 are held out
    assert (report["data"]["train_responses"], report["data"]["held_out_responses"]) == (26, 2)
    assert report["held_out_accuracy"][0]["top1"] > 10 / 101  # ten times chance


def test_shared_heads_reload_bit_exact(trained, tmp_path: Path) -> None:
    heads, _ = trained
    save_medusa_heads(heads, tmp_path, base_model_name_or_path="tiny-llama")
    reloaded = load_medusa_heads(tmp_path)
    assert not reloaded.own_lm_heads
    for name, tensor in _state(heads).items():
        assert torch.equal(tensor, _state(reloaded)[name]), name


def test_own_projection_export_reloads_bit_exact_and_predicts_the_same(
    tiny_base: BaseModel, trained, tmp_path: Path
) -> None:
    heads, positions = trained
    full = export_with_own_projections(heads, tiny_base.lm_head)
    save_medusa_heads(full, tmp_path, base_model_name_or_path="tiny-llama")
    reloaded = load_medusa_heads(tmp_path)
    assert reloaded.own_lm_heads
    for name, tensor in _state(full).items():
        assert torch.equal(tensor, _state(reloaded)[name]), name
    hidden = positions.hidden[:16].float().unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(reloaded(hidden, None), heads(hidden, tiny_base.lm_head), atol=1e-6)


def test_the_draft_vocabulary_lists_tokens_by_falling_frequency() -> None:
    responses = torch.tensor([5, 9, 9, 3, 9, 5, 7], dtype=torch.int32)
    assert most_frequent_tokens(responses, 3) == [9, 5, 3]
    assert draft_coverage(responses, [9, 5]) == pytest.approx(5 / 7)


def test_the_pipeline_writes_the_draft_vocabulary(tiny_base: BaseModel, tmp_path: Path) -> None:
    settings, report = _run(tiny_base, tmp_path)
    tokens = json.loads((settings.output / DRAFT_VOCABULARY_FILE).read_text())
    assert tokens and len(tokens) == len(set(tokens))
    assert all(0 <= token < tiny_base.vocab_size for token in tokens)
    assert 0 < report["data"]["draft_vocabulary_held_out_coverage"]["8192"] <= 1
