"""The Medusa heads' checkpoint: strict FasterDecoding-format loading, and heads checked against the model."""

from __future__ import annotations

import json

import pytest
import torch
from engine_tiny import random_heads, randomised
from safetensors.torch import load_file, save_file

from gorgon.core.errors import ConfigurationError
from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.checkpoint import (
    SAFETENSORS_FILE,
    MedusaCheckpointError,
    load_heads_for,
    load_medusa_heads,
    save_medusa_heads,
)
from gorgon.engine.drafting.heads import MedusaHeads

HIDDEN, VOCAB = 16, 40


@pytest.mark.parametrize("own_lm_heads", [True, False])
def test_round_trip_uses_faster_decoding_keys(tmp_path, own_lm_heads: bool) -> None:
    heads = randomised(MedusaHeads(HIDDEN, VOCAB, num_heads=4, num_layers=2, own_lm_heads=own_lm_heads))
    save_medusa_heads(heads, tmp_path, base_model_name_or_path="tiny")
    keys = set(load_file(str(tmp_path / SAFETENSORS_FILE)))
    assert "3.1.linear.bias" in keys
    assert ("3.2.weight" in keys) is own_lm_heads
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["medusa_num_heads"] == 4
    assert config["medusa_own_lm_heads"] is own_lm_heads
    loaded = load_medusa_heads(tmp_path, dtype=torch.float32)
    assert (loaded.num_heads, loaded.num_layers, loaded.own_lm_heads) == (4, 2, own_lm_heads)
    for name, tensor in heads.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


def test_head_count_comes_from_weights_not_config(tmp_path) -> None:
    heads = randomised(MedusaHeads(HIDDEN, VOCAB, num_heads=5, own_lm_heads=True))
    save_medusa_heads(heads, tmp_path, base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "config.json").read_text())
    config["medusa_num_heads"] = 2
    del config["medusa_own_lm_heads"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_medusa_heads(tmp_path).num_heads == 5


def test_pickle_checkpoint_loads(tmp_path) -> None:
    heads = randomised(MedusaHeads(HIDDEN, VOCAB, num_heads=2, own_lm_heads=True))
    torch.save(heads.state_dict_faster_decoding(), tmp_path / "medusa_lm_head.pt")
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1}))
    loaded = load_medusa_heads(tmp_path)
    torch.testing.assert_close(loaded.heads[1][1].weight, heads.heads[1][1].weight)


def _save_raw(tmp_path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(tmp_path / SAFETENSORS_FILE))
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1}))


def test_missing_key_is_an_error(tmp_path) -> None:
    tensors = MedusaHeads(HIDDEN, VOCAB, num_heads=2, own_lm_heads=True).state_dict_faster_decoding()
    del tensors["1.0.linear.bias"]
    _save_raw(tmp_path, tensors)
    with pytest.raises(MedusaCheckpointError, match=r"missing keys \['1.0.linear.bias'\]"):
        load_medusa_heads(tmp_path)


def test_unexpected_key_is_an_error(tmp_path) -> None:
    tensors = MedusaHeads(HIDDEN, VOCAB, num_heads=2, own_lm_heads=True).state_dict_faster_decoding()
    tensors["0.0.extra"] = torch.zeros(3)
    _save_raw(tmp_path, tensors)
    with pytest.raises(MedusaCheckpointError, match="unexpected keys"):
        load_medusa_heads(tmp_path)


def test_missing_directory_is_an_error(tmp_path) -> None:
    with pytest.raises(MedusaCheckpointError, match="does not exist"):
        load_medusa_heads(tmp_path / "nope")
    with pytest.raises(MedusaCheckpointError, match="no Medusa heads"):
        load_medusa_heads(tmp_path)


@pytest.mark.parametrize("own_lm_heads", [True, False])
def test_recurrent_heads_round_trip_bit_exact(tmp_path, own_lm_heads: bool) -> None:
    heads = randomised(MedusaHeads(HIDDEN, VOCAB, num_heads=3, own_lm_heads=own_lm_heads, recurrent=True))
    save_medusa_heads(heads, tmp_path, base_model_name_or_path="tiny")
    assert load_file(str(tmp_path / SAFETENSORS_FILE))["2.0.linear.weight"].shape == (HIDDEN, 2 * HIDDEN)
    loaded = load_medusa_heads(tmp_path, dtype=torch.float32)
    assert loaded.recurrent and loaded.hidden_size == HIDDEN and loaded.num_heads == 3
    for name, tensor in heads.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_recurrent_flag_contradicting_the_weights_is_refused(tmp_path) -> None:
    heads = randomised(MedusaHeads(HIDDEN, VOCAB, num_heads=2, own_lm_heads=False))
    save_medusa_heads(heads, tmp_path, base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"medusa_recurrent": True}))
    with pytest.raises(MedusaCheckpointError, match="medusa_recurrent"):
        load_medusa_heads(tmp_path)


def test_heads_missing_means_plain_decoding(make_engine, tmp_path) -> None:
    loaded = make_engine().loaded
    assert load_heads_for(loaded, EngineSettings(heads_path=tmp_path)) is None


def test_heads_for_another_model_are_rejected(make_engine, tmp_path) -> None:
    loaded = make_engine().loaded
    save_medusa_heads(MedusaHeads(32, 260, 2, own_lm_heads=True), tmp_path, base_model_name_or_path="other")
    with pytest.raises(ConfigurationError, match="hidden size 32"):
        load_heads_for(loaded, EngineSettings(heads_path=tmp_path))


def test_matching_heads_are_loaded(make_engine, tmp_path) -> None:
    loaded = make_engine().loaded
    save_medusa_heads(random_heads(3), tmp_path, base_model_name_or_path="tiny-llama")
    heads = load_heads_for(loaded, EngineSettings(heads_path=tmp_path))
    assert heads is not None and heads.num_heads == 3
    assert load_heads_for(loaded, EngineSettings(heads_path=tmp_path, speculation=False)) is None
