"""Where the heads come from: per model by default, a local directory, or a hub id resolved through
huggingface_hub's snapshot_download against a hub cache laid out as a download leaves it (offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from engine_tiny import random_heads
from huggingface_hub import constants
from vicuna_tiny import faster_decoding_heads, write_faster_decoding_heads

from gorgon.core.errors import ConfigurationError
from gorgon.engine.config import DEFAULT_HEADS_PATH, EngineSettings
from gorgon.engine.drafting.checkpoint import load_heads_for, save_medusa_heads
from gorgon.engine.drafting.source import heads_directory, is_hub_id

HUB_ID = "FasterDecoding/medusa-tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache that huggingface_hub reads offline, as a pod without network sees its cache volume."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repository(cache: Path, repo_id: str, files: Path) -> Path:
    """`files` as a download of `repo_id` at COMMIT leaves them: models--owner--name/{refs/main, snapshots/..}."""
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repository / "snapshots" / COMMIT
    shutil.copytree(files, snapshot)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_the_shipped_heads_belong_to_the_default_model_only() -> None:
    assert heads_directory(EngineSettings()) == DEFAULT_HEADS_PATH
    assert heads_directory(EngineSettings(model="lmsys/vicuna-7b-v1.3")) is None
    assert heads_directory(EngineSettings(default_model_heads_path=Path("/opt/heads"))) == Path("/opt/heads")


def test_the_image_setting_moves_the_default_models_heads(monkeypatch) -> None:
    monkeypatch.setenv("GORGON_ENGINE_DEFAULT_MODEL_HEADS_PATH", "/opt/gorgon/models/smollm2-medusa")
    assert heads_directory(EngineSettings()) == Path("/opt/gorgon/models/smollm2-medusa")
    assert heads_directory(EngineSettings(model="/opt/gorgon/model")) is None


def test_a_model_without_heads_decodes_plainly_and_says_so_once(make_engine, caplog) -> None:
    loaded = make_engine().loaded
    with caplog.at_level("INFO", logger="gorgon.engine.drafting.checkpoint"):
        assert load_heads_for(loaded, EngineSettings(model="/opt/gorgon/model")) is None
    assert [record.getMessage() for record in caplog.records] == [
        "no Medusa heads configured for tiny-llama: speculation off, plain decoding"
    ]


@pytest.mark.parametrize(
    ("text", "hub"),
    [
        ("FasterDecoding/medusa-vicuna-7b-v1.3", True),
        ("/models/heads", False),
        ("./heads", False),
        ("models/heads/v1", False),
        ("heads", False),
    ],
)
def test_hub_ids_are_told_from_paths(text: str, hub: bool) -> None:
    assert is_hub_id(text) is hub


def test_an_existing_directory_wins_over_a_hub_id(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Org" / "heads").mkdir(parents=True)
    assert heads_directory(EngineSettings(heads_path="Org/heads")) == Path("Org/heads")


def test_heads_from_a_hub_id_resolve_through_the_hub_cache(make_engine, hub_cache, tmp_path) -> None:
    loaded = make_engine().loaded
    written = random_heads(3)
    save_medusa_heads(written, tmp_path / "heads", base_model_name_or_path="tiny-llama")
    snapshot = cache_repository(hub_cache, HUB_ID, tmp_path / "heads")
    settings = EngineSettings(model="/opt/gorgon/model", heads_path=HUB_ID)
    assert heads_directory(settings, fetch=True) == snapshot
    assert heads_directory(settings) == snapshot
    heads = load_heads_for(loaded, settings)
    assert heads is not None and heads.num_heads == 3


def test_heads_from_a_hub_id_for_another_model_are_refused_naming_both_shapes(
    make_engine, hub_cache, tmp_path
) -> None:
    loaded = make_engine().loaded
    write_faster_decoding_heads(faster_decoding_heads(32, 600, 2), tmp_path / "heads", "lmsys/vicuna-7b-v1.3")
    cache_repository(hub_cache, HUB_ID, tmp_path / "heads")
    settings = EngineSettings(model="/opt/gorgon/model", heads_path=HUB_ID)
    with pytest.raises(
        ConfigurationError, match=r"hidden size 32 / vocabulary 600, but tiny-llama has 64 / 260"
    ):
        load_heads_for(loaded, settings)


def test_a_hub_id_that_cannot_be_fetched_is_a_clear_error(make_engine, hub_cache) -> None:
    settings = EngineSettings(model="/opt/gorgon/model", heads_path="Nobody/no-such-heads")
    with pytest.raises(ConfigurationError, match="cannot fetch the Medusa heads 'Nobody/no-such-heads'"):
        load_heads_for(make_engine().loaded, settings)
