"""The KV-cache token budget: bytes per token from a model config, the budget from a device's memory, the start-up
error, and admission by it in a Medusa engine on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_tiny import random_heads
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gorgon.core.errors import ConfigurationError, ContextOverflowError
from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.loader import LoadedModel
from gorgon.engine.medusa_engine import MedusaEngine
from gorgon.engine.memory_budget import (
    GIB,
    MIB,
    DeviceMemory,
    MemorySource,
    ModelGeometry,
    StepShape,
    bytes_per_slot,
    fits_kv_budget,
    host_memory,
    kv_budget,
    verification_window_copies,
)
from gorgon.engine.shapes import build_shapes
from gorgon.engine.tree import build_tree_buffers, chain

CUDA = torch.device("cuda")  # only its type is read: no CUDA device is touched
CPU = torch.device("cpu")

# Vicuna-7B's sizes in float16, the tree mc_sim_7b_63 (64 nodes), 16 rows, prefill chunks of 1024 tokens.
VICUNA_7B = ModelGeometry(
    num_layers=32,
    kv_heads=32,
    head_dim=128,
    hidden_size=4096,
    intermediate_size=11008,
    vocab_size=32000,
    dtype_bytes=2,
)
VICUNA_STEP = StepShape(rows=16, tree_nodes=64, prefill_tokens=1024, window_copies=0)
# The prefill of 16 rows x 1024 tokens is the larger step: per token (3 x 11008 + 6 x 4096) x 2 = 115,200 bytes
# of activations, per row 32,000 x (2 + 2 x 4) = 320,000 bytes of last-token logits.
VICUNA_STEP_RESERVE = 16 * (1024 * 115_200 + 320_000)
VICUNA_KV_PER_TOKEN = 2 * 32 * 32 * 128 * 2  # 0.5 MiB
# On CUDA the attention copies no window: a slot's peak is its keys and values plus a join's second copy.
VICUNA_SLOT = 2 * VICUNA_KV_PER_TOKEN


def _fixed(memory: DeviceMemory) -> MemorySource:
    """A memory source reading `memory` on any device."""
    return lambda device: memory


def _request(request_id: str, prompt_tokens: int, max_new_tokens: int) -> GenerationRequest:
    prompt = tuple(range(10, 10 + prompt_tokens))
    return GenerationRequest(request_id, prompt, SamplingParams(max_new_tokens=max_new_tokens))


def test_kv_bytes_per_token_counts_the_kv_heads_of_grouped_query_attention() -> None:
    config = LlamaConfig(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32
    )
    geometry = ModelGeometry.from_config(config, torch.bfloat16)
    assert (geometry.kv_heads, geometry.head_dim) == (8, 128)
    assert geometry.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # 128 KiB, a quarter of 32 KV heads'


def test_kv_bytes_per_token_takes_the_configured_head_dim() -> None:
    config = LlamaConfig(hidden_size=2048, num_attention_heads=8, num_key_value_heads=1, head_dim=256)
    geometry = ModelGeometry.from_config(config, torch.float16)
    assert geometry.head_dim == 256  # not 2048 / 8
    assert geometry.kv_bytes_per_token == 2 * config.num_hidden_layers * 1 * 256 * 2


def test_a_config_without_kv_heads_has_one_per_attention_head() -> None:
    config = GPT2Config(n_embd=768, n_head=12, n_layer=12)
    geometry = ModelGeometry.from_config(config, torch.float32)
    assert (geometry.kv_heads, geometry.head_dim, geometry.intermediate_size) == (12, 64, 4 * 768)
    assert geometry.kv_bytes_per_token == 2 * 12 * 12 * 64 * 4


def test_cuda_budget_is_the_fraction_of_total_memory_less_what_is_in_use() -> None:
    memory = DeviceMemory(free_bytes=66 * GIB, total_bytes=80 * GIB)  # 14 GiB in use: weights, context
    budget = kv_budget(VICUNA_7B, VICUNA_STEP, CUDA, 0.9, minimum_tokens=2112, read_memory=_fixed(memory))
    usable = int(0.9 * 80 * GIB) - 14 * GIB
    assert budget.usable_bytes == usable
    assert budget.reserve_bytes == VICUNA_STEP_RESERVE
    assert budget.bytes_per_slot == VICUNA_SLOT == 1 * MIB
    assert budget.tokens == (usable - VICUNA_STEP_RESERVE) // VICUNA_SLOT == 57_587


def test_memory_other_processes_use_counts_against_the_cuda_fraction() -> None:
    def tokens(free_gib: int) -> int:
        memory = DeviceMemory(free_bytes=free_gib * GIB, total_bytes=80 * GIB)
        budget = kv_budget(VICUNA_7B, VICUNA_STEP, CUDA, 0.9, minimum_tokens=1, read_memory=_fixed(memory))
        return budget.tokens

    assert tokens(66) - tokens(56) == 10 * GIB // VICUNA_SLOT


def test_cpu_budget_is_the_fraction_of_available_memory() -> None:
    memory = DeviceMemory(free_bytes=10 * GIB, total_bytes=32 * GIB)
    budget = kv_budget(VICUNA_7B, VICUNA_STEP, CPU, 0.5, minimum_tokens=1, read_memory=_fixed(memory))
    assert budget.usable_bytes == 5 * GIB
    assert budget.tokens == (5 * GIB - VICUNA_STEP_RESERVE) // VICUNA_SLOT


def test_a_decoding_step_over_a_large_tree_can_set_the_reserve() -> None:
    wide_tree = StepShape(rows=16, tree_nodes=256, prefill_tokens=64, window_copies=0)
    logits_per_token = 32000 * (2 + 2 * 4)
    memory = DeviceMemory(free_bytes=66 * GIB, total_bytes=80 * GIB)
    budget = kv_budget(VICUNA_7B, wide_tree, CUDA, 0.9, minimum_tokens=1, read_memory=_fixed(memory))
    assert budget.reserve_bytes == 16 * 256 * (115_200 + logits_per_token)


def test_window_copies_follow_the_verification_attention_of_the_device() -> None:
    plain_and_chain = [build_tree_buffers((), name="plain"), build_tree_buffers(chain(3), name="chain_3")]
    branching = build_tree_buffers([(0,), (1,), (0, 0), (0, 1), (1, 0)], name="branching")
    lookahead = build_tree_buffers([(0,), (1,), (0, 0), (0, 1)], name="spine", lookahead=True)
    assert verification_window_copies(plain_and_chain, CPU) == 1  # the window converted to float32
    assert verification_window_copies([*plain_and_chain, lookahead], CPU) == 1
    assert verification_window_copies([*plain_and_chain, branching], CPU) == branching.num_nodes == 6
    assert verification_window_copies([*plain_and_chain, branching], CUDA) == 0  # one masked call


def test_gathered_windows_can_outweigh_a_joins_copy() -> None:
    smollm2 = ModelGeometry(30, 3, 64, 576, 1536, 49152, dtype_bytes=2)  # bfloat16
    kv = 2 * 30 * 3 * 64 * 2
    few_copies = StepShape(rows=16, tree_nodes=6, prefill_tokens=64, window_copies=6)
    many_copies = StepShape(rows=16, tree_nodes=64, prefill_tokens=64, window_copies=64)
    assert bytes_per_slot(smollm2, few_copies) == 2 * kv  # 6 copies of a layer weigh less than 30 layers
    assert bytes_per_slot(smollm2, many_copies) == kv + 64 * 2 * 3 * 64 * (2 + 4)  # bf16 gathered, then fp32


def test_a_budget_below_one_context_is_a_startup_error() -> None:
    memory = DeviceMemory(free_bytes=9 * GIB, total_bytes=24 * GIB)  # Vicuna-7B's weights on a 24 GiB GPU
    with pytest.raises(ConfigurationError) as raised:
        kv_budget(VICUNA_7B, VICUNA_STEP, CUDA, 0.5, minimum_tokens=2112, read_memory=_fixed(memory))
    message = str(raised.value)
    assert "\n" not in message
    assert "GORGON_ENGINE_GPU_MEMORY_UTILIZATION=0.5" in message
    assert "9.0 GiB free" in message
    assert "1.0 MiB a token" in message
    assert "2,112 tokens" in message


def test_memory_short_of_the_step_reserve_leaves_no_tokens() -> None:
    memory = DeviceMemory(free_bytes=GIB, total_bytes=GIB)
    with pytest.raises(ConfigurationError, match=r"^the KV cache budget is 0 tokens"):
        kv_budget(VICUNA_7B, VICUNA_STEP, CPU, 0.9, minimum_tokens=2112, read_memory=_fixed(memory))


def test_rows_are_counted_padded_to_the_longest() -> None:
    assert fits_kv_budget(0, 0, 10_000, budget_tokens=320)  # an empty engine always takes one
    assert fits_kv_budget(1, 512, 64, budget_tokens=1024)
    assert not fits_kv_budget(1, 512, 64, budget_tokens=1000)  # the short row takes 512 slots too
    assert not fits_kv_budget(1, 64, 512, budget_tokens=1000)  # and so does the held one beside a long one


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_host_memory_is_capped_by_the_cgroup_limit(tmp_path: Path) -> None:
    meminfo = _write(tmp_path / "meminfo", "MemTotal:       67108864 kB\nMemAvailable:   50331648 kB\n")
    limited = (
        _write(tmp_path / "v2" / "memory.max", "8589934592\n"),
        _write(tmp_path / "v2" / "memory.current", "2147483648\n"),
    )
    assert host_memory(meminfo, [limited]) == DeviceMemory(6 * GIB, 8 * GIB)
    unlimited = (_write(tmp_path / "max" / "memory.max", "max\n"), limited[1])
    assert host_memory(meminfo, [unlimited]) == DeviceMemory(48 * GIB, 64 * GIB)
    assert host_memory(meminfo, []) == DeviceMemory(48 * GIB, 64 * GIB)


def _engine(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    heads_dir: Path,
    memory: DeviceMemory,
    heads: MedusaHeads | None = None,
) -> MedusaEngine:
    """The tiny model's engine on CPU with the given memory at start and the whole of it usable."""
    loaded = LoadedModel(
        model=model,
        forward=model,
        tokenizer=tokenizer,
        name="tiny-llama",
        device=CPU,
        dtype=torch.float32,
        uses_deepspeed=False,
    )
    settings = EngineSettings(use_deepspeed=False, heads_path=str(heads_dir), gpu_memory_utilization=1.0)
    return MedusaEngine(loaded, heads, settings, read_memory=_fixed(memory))


@pytest.fixture
def engine_with_room_for(tiny_model, tokenizer, tmp_path: Path):
    """Builds the tiny model's engine whose KV budget is `tokens` tokens."""

    def build(tokens: int) -> MedusaEngine:
        probe = _engine(tiny_model, tokenizer, tmp_path, DeviceMemory(GIB, GIB))
        budget = probe.kv_budget
        free = budget.reserve_bytes + tokens * budget.bytes_per_slot
        engine = _engine(tiny_model, tokenizer, tmp_path, DeviceMemory(free, 2 * free))
        assert engine.kv_budget.tokens == tokens
        return engine

    return build


def test_engine_admits_one_long_request_and_holds_the_next_while_it_runs(engine_with_room_for) -> None:
    engine = engine_with_room_for(400)  # one context (256 tokens + the tree, 320 slots), not two long rows
    first, second = _request("first", 200, 40), _request("second", 200, 40)  # 256 slots each
    assert engine.admits(first, None)
    engine.add(first)
    assert not engine.admits(second, None)  # waiting rows hold their slots already
    engine.step()  # the first chunk of its prompt
    assert not engine.admits(second, None)
    assert not engine.admits(
        _request("short", 10, 10), None
    )  # it would be padded to the long row's 256 slots
    finished = False
    while not finished:
        finished = any(event.finish_reason or event.error for event in engine.step())
        if not finished:
            assert not engine.admits(second, None)
    assert engine.num_active == 0
    assert engine.admits(second, None)


def test_engine_admits_under_the_smaller_of_its_budget_and_the_workers(engine_with_room_for) -> None:
    engine = engine_with_room_for(400)
    engine.add(_request("first", 10, 10))
    short = _request("short", 10, 10)
    assert engine.admits(short, None)  # 2 rows x 64 slots fit 400
    assert not engine.admits(short, 30)  # 20 + 20 tokens exceed the worker's 30


def test_a_request_no_step_could_serve_is_refused_at_once_not_held(engine_with_room_for) -> None:
    """Beyond the context window it will never fit: admitted, so that `add` refuses it while the batch runs."""
    engine = engine_with_room_for(400)
    engine.add(_request("first", 200, 40))
    too_long = _request("too-long", 300, 40)  # the tiny model's context is 256 tokens
    assert engine.admits(too_long, None)
    with pytest.raises(ContextOverflowError):
        engine.add(too_long)


def test_engine_start_fails_when_memory_holds_less_than_a_context(
    tiny_model, tokenizer, tmp_path: Path
) -> None:
    probe = _engine(tiny_model, tokenizer, tmp_path, DeviceMemory(GIB, GIB))
    context_slots = 320  # 256 tokens + the tree's 2 spare slots, rounded up to 64
    free = probe.kv_budget.reserve_bytes + (context_slots - 1) * probe.kv_budget.bytes_per_slot
    with pytest.raises(ConfigurationError, match="fewer than one full context"):
        _engine(tiny_model, tokenizer, tmp_path, DeviceMemory(free, free))


def test_a_cpu_engine_budgets_the_windows_its_branching_tree_gathers(
    tiny_model, tokenizer, tmp_path: Path
) -> None:
    heads = random_heads()  # Medusa-1 heads: on CPU the engine offers plain, a chain and the branching cpu_12
    tree = build_shapes(EngineSettings(heads_path=str(tmp_path)), heads, CPU)[-1]
    assert not (tree.is_chain or tree.lookahead)
    engine = _engine(tiny_model, tokenizer, tmp_path, DeviceMemory(GIB, GIB), heads)
    kv = 2 * 2 * 2 * 16 * 4  # 2 layers, 2 KV heads of 16, float32
    gathered = tree.num_nodes * 2 * 2 * 16 * (4 + 4)  # one layer's keys and values per node, then as float32
    assert engine.kv_budget.bytes_per_slot == kv + gathered
    assert _engine(tiny_model, tokenizer, tmp_path, DeviceMemory(GIB, GIB)).kv_budget.bytes_per_slot == 2 * kv
