"""The speculative step on a tiny random Llama: acceptance, KV compaction, lookahead trees, typical acceptance."""

from __future__ import annotations

import torch
from engine_tiny import VOCAB, as_the_cpu_engine_runs_it, empty_cache, random_heads, smollm2_shaped_llama

from gorgon.engine import attention
from gorgon.engine.decode import forward_prompts, prefill, speculative_step
from gorgon.engine.drafting.heads import DRAFT_TOPK
from gorgon.engine.kernels.lean import LeanLlamaDecoder
from gorgon.engine.kv import RowKVCache
from gorgon.engine.logits_processing import LogitBias
from gorgon.engine.parts import ModelParts
from gorgon.engine.sampling import RowSampling, TypicalAcceptance
from gorgon.engine.tree import build_tree_buffers, chain

NUM_HEADS = 3


def _parts(model) -> ModelParts:
    return ModelParts(model.get_decoder(), model.get_output_embeddings(), random_heads(NUM_HEADS))


def _cache(model, batch: int, capacity: int = 96) -> RowKVCache:
    return empty_cache(model, batch, capacity)


def _greedy(model, prompt: list[int], count: int) -> list[int]:
    output = model.generate(torch.tensor([prompt]), max_new_tokens=count, do_sample=False)
    return output[0, len(prompt) :].tolist()


def _oracle_drafts(continuations: list[list[int]], correct_heads: list[int]) -> torch.Tensor:
    """Drafts whose rank-0 guess is the true token for the first `correct_heads[row]` heads, wrong after."""
    drafts = torch.zeros(len(continuations), NUM_HEADS, DRAFT_TOPK, dtype=torch.long)
    for row, future in enumerate(continuations):
        for head in range(NUM_HEADS):
            truth = future[head]
            ranked = [(truth + 1 + rank) % VOCAB for rank in range(DRAFT_TOPK)]
            if head < correct_heads[row]:
                ranked[0] = truth
            drafts[row, head] = torch.tensor(ranked)
    return drafts


def test_accepts_correct_drafts_and_kv_equals_fresh_prefill(tiny_model) -> None:
    parts = _parts(tiny_model)
    prompts = [[5, 17, 99, 3, 42], [7, 8, 9, 10, 11, 12, 13, 14, 15]]
    greedy = [_greedy(tiny_model, prompt, 8) for prompt in prompts]
    rows = [RowSampling(), RowSampling()]
    cache = _cache(tiny_model, 2)
    first = prefill(parts, cache, prompts, rows)
    assert first.next_tokens.tolist() == [greedy[0][0], greedy[1][0]]
    drafts = _oracle_drafts([g[1:] for g in greedy], correct_heads=[2, 0])
    tree = build_tree_buffers([(0,), (1,), (0, 0), (0, 1), (0, 0, 0)])
    outcome = speculative_step(
        parts, cache, first.next_tokens, drafts, tree, rows, TypicalAcceptance(), want_drafts=True
    )
    assert outcome.accepted_drafts == [2, 0]
    assert outcome.emitted == [greedy[0][1:4], greedy[1][1:2]]
    assert outcome.draft_topk is not None and outcome.draft_topk.shape == (2, NUM_HEADS, DRAFT_TOPK)
    # the cache now holds prompt + root + accepted drafts, exactly as a fresh prefill of that text
    accepted_text = [prompts[0] + greedy[0][:3], prompts[1] + greedy[1][:1]]
    assert cache.lengths.tolist() == [len(text) for text in accepted_text]
    fresh = _cache(tiny_model, 2)
    prefill(parts, fresh, accepted_text, rows)
    for row, text in enumerate(accepted_text):
        for layer, fresh_layer in zip(cache.layers, fresh.layers, strict=True):
            torch.testing.assert_close(layer.keys[row, :, : len(text)], fresh_layer.keys[row, :, : len(text)])
            torch.testing.assert_close(
                layer.values[row, :, : len(text)], fresh_layer.values[row, :, : len(text)]
            )


def test_prompts_of_any_lengths_prefilled_together_leave_what_each_leaves_alone() -> None:
    """One padded prefill forward for prompts of several lengths, each row's attention a call of its own
    (engine/attention.py): every row's hidden states, keys, values and first token are bit for bit those of its
    prompt prefilled alone, in bf16 through the CPU engine's packed linears and lean forward. The lengths cross
    SDPA's 32-query blocks, where a shared call rounds a short prompt's queries otherwise than a call of its own."""
    model = smollm2_shaped_llama(torch.bfloat16)
    decoder = LeanLlamaDecoder(as_the_cpu_engine_runs_it(model.get_decoder(), torch.bfloat16))
    parts = ModelParts(
        decoder, as_the_cpu_engine_runs_it(model.get_output_embeddings(), torch.bfloat16), None
    )
    prompts = [[(7 * index + 3) % VOCAB for index in range(length)] for length in (33, 42, 7, 36)]
    together = empty_cache(model, len(prompts), 128)
    hidden = forward_prompts(parts, together, prompts)
    for row, prompt in enumerate(prompts):
        alone = empty_cache(model, 1, 128)
        hidden_alone = forward_prompts(parts, alone, [prompt])
        assert torch.equal(hidden[row, : len(prompt)], hidden_alone[0])
        for layer, layer_alone in zip(together.layers, alone.layers, strict=True):
            assert torch.equal(layer.keys[row, :, : len(prompt)], layer_alone.keys[0, :, : len(prompt)])
            assert torch.equal(layer.values[row, :, : len(prompt)], layer_alone.values[0, :, : len(prompt)])
    rows = [RowSampling() for _ in prompts]
    first = prefill(parts, empty_cache(model, len(prompts), 128), prompts, rows).next_tokens.tolist()
    alone_first = [
        prefill(parts, empty_cache(model, 1, 128), [prompt], rows[:1]).next_tokens.item()
        for prompt in prompts
    ]
    assert first == alone_first


def test_a_padded_prefill_attends_each_row_in_a_call_of_its_own_shape(tiny_model, monkeypatch) -> None:
    """Each row's attention call has the shape of that prompt's prefill alone: its own queries, its own window."""
    calls: list[tuple[int, int, int]] = []
    real_sdpa = attention.sdpa_attention_forward

    def recording(module, query, key, value, mask, **kwargs):
        calls.append((query.shape[0], query.shape[2], key.shape[2]))
        return real_sdpa(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", recording)
    prompts = [list(range(1, 1 + length)) for length in (33, 7, 40)]
    prefill(_parts(tiny_model), _cache(tiny_model, 3), prompts, [RowSampling() for _ in prompts])
    assert calls == [(1, 33, 64), (1, 7, 32), (1, 40, 64)] * tiny_model.config.num_hidden_layers


def test_a_path_through_a_second_sibling_is_moved_into_place(tiny_model) -> None:
    """Accepting (1,) then (1, 0) moves their K/V down to the row's next slots, in every layer."""
    parts = _parts(tiny_model)
    prompt = [9, 8, 7, 6, 5, 4]
    greedy = _greedy(tiny_model, prompt, 6)
    cache = _cache(tiny_model, 1)
    first = prefill(parts, cache, [prompt], [RowSampling()])
    drafts = _oracle_drafts([greedy[1:]], correct_heads=[2])
    drafts[0, 0, :2] = drafts[0, 0, :2].flip(0)  # head 0's true token at rank 1, a wrong one at rank 0
    tree = build_tree_buffers([(0,), (1,), (0, 0), (1, 0)])
    outcome = speculative_step(
        parts, cache, first.next_tokens, drafts, tree, [RowSampling()], TypicalAcceptance(), want_drafts=False
    )
    assert outcome.accepted_drafts == [2]
    assert outcome.emitted == [greedy[1:4]]
    text = prompt + greedy[:3]
    fresh = _cache(tiny_model, 1)
    prefill(parts, fresh, [text], [RowSampling()])
    assert cache.lengths.tolist() == [len(text)]
    torch.testing.assert_close(cache.storage[:, :, :, : len(text)], fresh.storage[:, :, :, : len(text)])


def test_a_lookahead_leaf_holding_the_next_token_drafts_the_next_step(tiny_model) -> None:
    """Head 0's true token at rank 1: the chain is rejected, leaf (1,) holds the chosen token, and its own
    logits become the next step's first draft, whose top-1 is the token greedy decoding gives after it."""
    parts = _parts(tiny_model)
    prompt = [9, 8, 7, 6, 5, 4]
    greedy = _greedy(tiny_model, prompt, 6)
    cache = _cache(tiny_model, 1)
    first = prefill(parts, cache, [prompt], [RowSampling()])
    drafts = _oracle_drafts([greedy[1:]], correct_heads=[2])
    drafts[0, 0, :2] = drafts[0, 0, :2].flip(0)
    tree = build_tree_buffers([(0,), (1,), (0, 0), (2,)], lookahead=True)
    outcome = speculative_step(
        parts, cache, first.next_tokens, drafts, tree, [RowSampling()], TypicalAcceptance(), want_drafts=True
    )
    assert outcome.accepted_drafts == [0]
    assert outcome.emitted == [greedy[1:2]]
    assert outcome.draft_topk is not None and outcome.draft_topk.shape == (1, NUM_HEADS, DRAFT_TOPK)
    assert outcome.draft_topk[0, 0, 0].item() == greedy[2]
    text = prompt + greedy[:1]
    fresh = _cache(tiny_model, 1)
    prefill(parts, fresh, [text], [RowSampling()])
    assert cache.lengths.tolist() == [len(text)]
    torch.testing.assert_close(cache.storage[:, :, :, : len(text)], fresh.storage[:, :, :, : len(text)])


def test_lookahead_tree_steps_reproduce_greedy(tiny_model) -> None:
    parts = _parts(tiny_model)
    prompt = [3, 1, 4, 1, 5]
    greedy = _greedy(tiny_model, prompt, 30)
    cache = _cache(tiny_model, 1)
    outcome = prefill(parts, cache, [prompt], [RowSampling()])
    produced = list(outcome.emitted[0])
    tree = build_tree_buffers([(0,), (1,), (2,), (0, 0), (0, 1), (0, 0, 0), (0, 0, 1)], lookahead=True)
    lookahead_drafts = 0
    while len(produced) < 24:
        drafts = outcome.draft_topk
        if len(produced) % 3 == 0 or drafts is None:  # now and then oracle drafts, else the step's own
            drafts = _oracle_drafts([greedy[len(produced) :]], correct_heads=[len(produced) % NUM_HEADS])
            drafts[0, 0, :2] = drafts[0, 0, :2].flip(0)
        lookahead_drafts += int(drafts[0, 0, 0].item() == greedy[len(produced)])
        outcome = speculative_step(
            parts,
            cache,
            outcome.next_tokens,
            drafts,
            tree,
            [RowSampling()],
            TypicalAcceptance(),
            want_drafts=True,
        )
        produced += outcome.emitted[0]
    assert produced[:24] == greedy[:24]
    assert lookahead_drafts > 0  # leaves' logits drafted right first tokens


def test_repeated_speculative_steps_reproduce_greedy(tiny_model) -> None:
    parts = _parts(tiny_model)
    prompt = [1, 2, 3, 4]
    greedy = _greedy(tiny_model, prompt, 24)
    cache = _cache(tiny_model, 1)
    outcome = prefill(parts, cache, [prompt], [RowSampling()])
    produced = list(outcome.emitted[0])
    tree = build_tree_buffers(chain(NUM_HEADS))
    pattern = [3, 1, 0, 2]
    step = 0
    while len(produced) < 20:
        drafts = _oracle_drafts([greedy[len(produced) :]], correct_heads=[pattern[step % len(pattern)]])
        outcome = speculative_step(
            parts,
            cache,
            outcome.next_tokens,
            drafts,
            tree,
            [RowSampling()],
            TypicalAcceptance(),
            want_drafts=False,
        )
        produced += outcome.emitted[0]
        step += 1
    assert produced[:20] == greedy[:20]
    assert step < 19  # several tokens per step were accepted


def test_non_speculative_row_accepts_nothing(tiny_model) -> None:
    parts = _parts(tiny_model)
    prompt = [9, 9, 8]
    greedy = _greedy(tiny_model, prompt, 4)
    rows = [RowSampling(speculative=False)]
    cache = _cache(tiny_model, 1)
    first = prefill(parts, cache, [prompt], rows)
    drafts = _oracle_drafts([greedy[1:]], correct_heads=[3])
    outcome = speculative_step(
        parts,
        cache,
        first.next_tokens,
        drafts,
        build_tree_buffers(chain(3)),
        rows,
        TypicalAcceptance(),
        want_drafts=False,
    )
    assert outcome.emitted == [greedy[1:2]]


def test_a_sampled_row_in_a_lookahead_tree_accepts_by_typical_acceptance(tiny_model) -> None:
    """A nearly greedy temperature: the drafted chain's right tokens have p ~ 1 and pass the typical test."""
    parts = _parts(tiny_model)
    prompt = [2, 7, 1, 8, 2, 8]
    greedy = _greedy(tiny_model, prompt, 8)
    rows = [RowSampling(temperature=1e-4, generator=torch.Generator().manual_seed(0))]
    cache = _cache(tiny_model, 1)
    first = prefill(parts, cache, [prompt], rows)
    drafts = _oracle_drafts([greedy[1:]], correct_heads=[2])
    tree = build_tree_buffers([(0,), (0, 0), (0, 0, 0), (1,), (0, 1), (0, 0, 1)], lookahead=True)
    outcome = speculative_step(
        parts, cache, first.next_tokens, drafts, tree, rows, TypicalAcceptance(), want_drafts=True
    )
    assert outcome.accepted_drafts == [2]
    assert outcome.emitted == [greedy[1:4]]
    assert cache.lengths.tolist() == [len(prompt) + 3]


def test_a_sampled_row_accepts_drafts_by_typical_acceptance_on_its_processed_logits(tiny_model) -> None:
    """A bias of 100 makes one token certain: drafts of it pass the typical test, and the row samples it after
    them; without the bias the same drafts are rejected."""
    parts = _parts(tiny_model)
    prompt = [2, 7, 1, 8, 2, 8]
    forced = 42
    drafts = torch.full((1, NUM_HEADS, DRAFT_TOPK), forced, dtype=torch.long)
    outcomes = {}
    for name, processors in (
        ("biased", (LogitBias([(forced, 100.0)], VOCAB, torch.device("cpu")),)),
        ("raw", ()),
    ):
        rows = [
            RowSampling(temperature=1.0, generator=torch.Generator().manual_seed(0), processors=processors)
        ]
        cache = _cache(tiny_model, 1)
        prefill(parts, cache, [prompt], rows)
        root = torch.tensor([forced])  # the same last token for both rows
        outcomes[name] = speculative_step(
            parts,
            cache,
            root,
            drafts,
            build_tree_buffers(chain(NUM_HEADS)),
            rows,
            TypicalAcceptance(),
            want_drafts=False,
        )
    assert outcomes["biased"].emitted == [[forced] * (NUM_HEADS + 1)]
    assert outcomes["raw"].accepted_drafts == [0]
