"""The heads gorgon ships for its default model: present, loadable, small, and fast on held-out prompts."""

from __future__ import annotations

import json

import pytest
import torch

from gorgon.engine.batch import cache_capacity
from gorgon.engine.chat import encode_chat
from gorgon.engine.config import DEFAULT_HEADS_PATH, EngineSettings
from gorgon.engine.decode import prefill, speculative_step
from gorgon.engine.drafting.checkpoint import HEADS_TREE_FILE, load_medusa_heads
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.drafting.lookup import ContextLookup, with_lookup_drafts
from gorgon.engine.interface import ChatMessage
from gorgon.engine.kv import RowKVCache
from gorgon.engine.loader import LoadedModel, load_model_and_tokenizer
from gorgon.engine.parts import ModelParts
from gorgon.engine.sampling import RowSampling, TypicalAcceptance
from gorgon.engine.tree import TreeBuffers, build_tree_buffers, is_spine_tree
from gorgon.training.base_model import BaseModel
from gorgon.training.distill import generate_greedy
from gorgon.training.evaluate import decoded_tokens_per_step, target_ranks
from gorgon.training.pipeline import REPORT_NAME
from gorgon.training.prompts import Split, prompts_for
from gorgon.training.trainer import head_targets

SMOLLM2_HIDDEN, SMOLLM2_VOCAB = 576, 49152
# The shipped heads decode about 1.85 tokens per step on these prompts (bf16 rounding, and so the figure, moves a
# little from CPU to CPU); below this floor the heads or their tree have regressed (docs/heads.md, "Results").
TOKENS_PER_STEP_FLOOR = 1.75


def _shipped_choices() -> list[tuple[int, ...]]:
    return [tuple(path) for path in json.loads((DEFAULT_HEADS_PATH / HEADS_TREE_FILE).read_text())]


def _shipped_tree() -> TreeBuffers:
    """The shipped tree as the engine runs it (a spine tree runs as a lookahead tree)."""
    choices = _shipped_choices()
    return build_tree_buffers(choices, name="shipped", lookahead=is_spine_tree(choices))


def _walked_steps(loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int) -> list[int]:
    """Steps the tree search's decode walk counts for the shipped tree along each prompt's greedy response."""
    base = BaseModel(model=loaded.model, tokenizer=loaded.tokenizer, name=loaded.name)
    heads = load_medusa_heads(DEFAULT_HEADS_PATH)  # float32, as the search reads them
    positions = head_targets(generate_greedy(base, prompts, max_new_tokens), heads.num_heads)
    ranks = target_ranks(heads, base.lm_head, positions, embed_tokens=base.embed_tokens)
    steps, start = [], 0
    for count in positions.response_positions:
        steps.append(round(count / decoded_tokens_per_step(ranks[start : start + count], _shipped_choices())))
        start += count
    return steps


def test_shipped_heads_load_strictly_and_fit_the_default_model() -> None:
    heads = load_medusa_heads(DEFAULT_HEADS_PATH)
    assert (heads.hidden_size, heads.vocab_size, heads.own_lm_heads) == (SMOLLM2_HIDDEN, SMOLLM2_VOCAB, False)
    assert heads.num_heads >= 3
    size = sum(path.stat().st_size for path in DEFAULT_HEADS_PATH.iterdir())
    assert size < 20 * 2**20  # 4 recurrent heads of 2 blocks in float32: 16 MB; the lm_head is not copied


def test_the_shipped_tree_uses_only_the_shipped_heads() -> None:
    tree = _shipped_tree()
    assert 1 < tree.num_nodes <= 64
    assert tree.max_depth <= load_medusa_heads(DEFAULT_HEADS_PATH).num_heads


def test_the_report_gives_held_out_accuracy_per_head() -> None:
    report = json.loads((DEFAULT_HEADS_PATH / REPORT_NAME).read_text())
    accuracy = report["held_out_accuracy"]
    assert len(accuracy) == load_medusa_heads(DEFAULT_HEADS_PATH).num_heads
    assert all(head["top1"] <= head["top5"] for head in accuracy)
    assert report["tree"]["medusa_choices"] == json.loads((DEFAULT_HEADS_PATH / HEADS_TREE_FILE).read_text())


SPARE_SLOTS = 64  # room for any shipped tree past the sequence, the same for every tree compared


def _greedy(
    loaded: LoadedModel,
    heads: MedusaHeads,
    tree: TreeBuffers,
    prompt: list[int],
    max_new_tokens: int,
    *,
    lookup: bool = False,
) -> tuple[list[int], int]:
    """Greedy decoding of one prompt with the engine's step, with context lookup drafts as the engine serves
    (`lookup`) or the heads' drafts alone; (tokens, speculative steps taken)."""
    config = loaded.model.config
    model = loaded.model
    parts = ModelParts(
        model.get_decoder(), model.get_output_embeddings(), heads, embed_tokens=model.get_input_embeddings()
    )
    cache = RowKVCache.allocate(
        num_layers=config.num_hidden_layers,
        batch=1,
        kv_heads=config.num_key_value_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        capacity=cache_capacity(len(prompt) + max_new_tokens, SPARE_SLOTS),
        dtype=loaded.dtype,
        device=loaded.device,
    )
    rows = [RowSampling()]
    outcome = prefill(parts, cache, [prompt], rows)
    tokens, steps = list(outcome.emitted[0]), 0
    settings = EngineSettings()
    context = ContextLookup(
        prompt + tokens, min_ngram=settings.lookup_min_ngram, max_ngram=settings.lookup_max_ngram
    )
    while len(tokens) < max_new_tokens and loaded.tokenizer.eos_token_id not in tokens:
        drafts = outcome.draft_topk
        if lookup and tree.num_nodes > 1:
            drafts = with_lookup_drafts(drafts, [context], outcome.first_draft_by_model)
        outcome = speculative_step(
            parts,
            cache,
            outcome.next_tokens,
            drafts,
            tree,
            rows,
            TypicalAcceptance(),
            want_drafts=True,
        )
        tokens += outcome.emitted[0]
        context.extend(outcome.emitted[0])
        steps += 1
    tokens = tokens[:max_new_tokens]
    eos = loaded.tokenizer.eos_token_id
    return (tokens[: tokens.index(eos) + 1] if eos in tokens else tokens), steps  # as the engine finishes


@pytest.mark.slow
@torch.inference_mode()
def test_shipped_heads_keep_their_tokens_per_step_on_held_out_prompts() -> None:
    loaded = load_model_and_tokenizer(EngineSettings(use_deepspeed=False, speculation=True))
    heads = load_medusa_heads(DEFAULT_HEADS_PATH, dtype=loaded.dtype)
    tree, plain = _shipped_tree(), build_tree_buffers((), name="plain")
    max_new_tokens = 64
    generated, engine_steps = 0, []
    prompts = [
        encode_chat(loaded.tokenizer, loaded.name, [ChatMessage("user", text)])
        for text in prompts_for(Split.HELD_OUT)[-3:]
    ]
    for prompt in prompts:
        medusa_tokens, medusa_steps = _greedy(loaded, heads, tree, prompt, max_new_tokens)
        served_tokens, _ = _greedy(loaded, heads, tree, prompt, max_new_tokens, lookup=True)
        plain_tokens, _ = _greedy(loaded, heads, plain, prompt, max_new_tokens)
        assert medusa_tokens == served_tokens == plain_tokens  # context lookup drafts change no token either
        generated += len(medusa_tokens) - 1  # the first token comes from the prefill
        engine_steps.append(medusa_steps)
    # the tree search's figure is the engine's: its walk along the same responses takes the same steps
    # (one step of slack per prompt for bf16 heads, which the search reads in float32)
    walked = _walked_steps(loaded, prompts, max_new_tokens)
    assert all(abs(a - b) <= 1 for a, b in zip(walked, engine_steps, strict=True)), (walked, engine_steps)
    tokens_per_step = generated / sum(engine_steps)  # the heads' own drafts, without lookup drafts
    assert tokens_per_step >= TOKENS_PER_STEP_FLOOR
