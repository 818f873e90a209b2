"""The engine through its public protocol: greedy equality, continuous batching, limits, errors."""

from __future__ import annotations

import json
import time

import pytest
import torch
from engine_tiny import random_heads

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.core.limits import MAX_STOP_SEQUENCE_CHARS, MAX_STOP_SEQUENCES
from gorgon.engine import medusa_engine, sampling
from gorgon.engine.interface import (
    ChatMessage,
    Engine,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)

PROMPTS = {
    "short": (5, 17, 99),
    "medium": (7, 8, 9, 10, 11, 12, 13),
    "long": tuple(range(30, 52)),
    "other": (200, 3, 3, 141, 90),
}


def _request(name: str, max_new_tokens: int = 20, **params: object) -> GenerationRequest:
    return GenerationRequest(name, PROMPTS[name], SamplingParams(max_new_tokens=max_new_tokens, **params))


def _drain(engine, collected: dict[str, list[TokenEvent]]) -> None:
    while engine.num_active:
        for event in engine.step():
            collected.setdefault(event.request_id, []).append(event)


def _tokens(events: list[TokenEvent]) -> list[int]:
    return [token for event in events for token in event.token_ids]


def _alone(engine_factory, request: GenerationRequest, heads=None) -> list[TokenEvent]:
    engine = engine_factory(heads, cycle_shapes=heads is not None)
    engine.add(request)
    collected: dict[str, list[TokenEvent]] = {}
    _drain(engine, collected)
    return collected[request.request_id]


def test_engine_satisfies_the_protocol(make_engine) -> None:
    assert isinstance(make_engine(), Engine)
    assert make_engine().info.speculative is False
    assert make_engine(random_heads()).info.speculative is True


@pytest.mark.parametrize("name", list(PROMPTS))
def test_greedy_plain_and_medusa_equal_hf_generate(make_engine, tiny_model, name: str) -> None:
    prompt = list(PROMPTS[name])
    hf = tiny_model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)[
        0, len(prompt) :
    ].tolist()
    plain = _alone(make_engine, _request(name))
    medusa = _alone(make_engine, _request(name), heads=random_heads())
    assert _tokens(plain) == hf
    assert _tokens(medusa) == hf
    assert plain[-1].finish_reason is FinishReason.LENGTH
    assert plain[-1].completion_tokens == 20
    assert plain[-1].prompt_tokens == len(prompt)


def test_batched_rows_join_and_leave_and_match_alone(make_engine) -> None:
    heads = random_heads()
    requests = {
        "short": _request("short", 12),
        "medium": _request("medium", 25),
        "long": _request("long", 18),
        "other": _request("other", 30),
    }
    expected = {name: _tokens(_alone(make_engine, request, heads)) for name, request in requests.items()}
    engine = make_engine(heads, cycle_shapes=True)
    collected: dict[str, list[TokenEvent]] = {}
    engine.add(requests["short"])
    engine.add(requests["medium"])
    for _ in range(4):
        for event in engine.step():
            collected.setdefault(event.request_id, []).append(event)
    engine.add(requests["long"])  # joins a running batch
    for _ in range(6):
        for event in engine.step():
            collected.setdefault(event.request_id, []).append(event)
    engine.add(requests["other"])  # joins after "short" has left
    _drain(engine, collected)
    for name, tokens in expected.items():
        assert _tokens(collected[name]) == tokens, name
    assert engine.num_active == 0


def test_cancelled_row_stops_and_others_continue(make_engine) -> None:
    expected = _tokens(_alone(make_engine, _request("medium", 16)))
    engine = make_engine(random_heads(), cycle_shapes=True)
    engine.add(_request("medium", 16))
    engine.add(_request("long", 16))
    collected: dict[str, list[TokenEvent]] = {}
    for _ in range(3):
        for event in engine.step():
            collected.setdefault(event.request_id, []).append(event)
    engine.cancel("long")
    engine.cancel("unknown-id")
    produced_before = len(collected["long"])
    _drain(engine, collected)
    assert len(collected["long"]) == produced_before
    assert _tokens(collected["medium"]) == expected


def test_seeded_sampling_is_reproducible_alone_and_batched(make_engine) -> None:
    """Plain decoding: with speculation the random draws follow the shapes the timing-based selector picks."""
    sampled = _request("other", 15, temperature=0.8, top_p=0.9, seed=1234, use_speculative=False)
    first = _tokens(_alone(make_engine, sampled, random_heads()))
    assert _tokens(_alone(make_engine, sampled, random_heads())) == first
    engine = make_engine(random_heads(), cycle_shapes=True)
    engine.add(_request("long", 10))
    engine.add(sampled)
    collected: dict[str, list[TokenEvent]] = {}
    _drain(engine, collected)
    assert _tokens(collected["other"]) == first
    different_seed = _request("other", 15, temperature=0.8, top_p=0.9, seed=99, use_speculative=False)
    assert _tokens(_alone(make_engine, different_seed)) != first


def test_stop_sequence_ends_the_text_before_it(make_engine, tokenizer) -> None:
    full = _alone(make_engine, _request("medium", 20))
    text = "".join(event.text for event in full)
    stop = text[6:9]
    assert stop and stop not in text[:6] + text[6:8]
    events = _alone(make_engine, _request("medium", 20, stop=(stop,)))
    assert "".join(event.text for event in events) == text[: text.index(stop)]
    assert events[-1].finish_reason is FinishReason.STOP
    assert len(_tokens(events)) < 20


def test_text_deltas_add_up_to_the_decoded_tokens(make_engine, tokenizer) -> None:
    events = _alone(make_engine, _request("long", 24))
    text = "".join(event.text for event in events)
    assert text == tokenizer.decode(_tokens(events), skip_special_tokens=True)


def test_prompt_plus_max_tokens_beyond_context_is_rejected(make_engine) -> None:
    engine = make_engine()
    context = engine.info.context_length
    with pytest.raises(ContextOverflowError, match=f"maximum context length is {context}"):
        engine.add(GenerationRequest("big", PROMPTS["long"], SamplingParams(max_new_tokens=context)))
    assert engine.num_active == 0
    engine.add(GenerationRequest("fits", PROMPTS["long"], SamplingParams(max_new_tokens=context - 22)))
    assert engine.num_active == 1


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ((), SamplingParams(), "prompt is empty"),
        ((1, 2), SamplingParams(max_new_tokens=0), "max_tokens"),
        ((1, 2), SamplingParams(top_p=0.0), "top_p"),
        ((1, 2), SamplingParams(top_p=float("nan")), "top_p"),
        ((1, 2), SamplingParams(temperature=float("nan")), "temperature"),
        ((1, 2), SamplingParams(temperature=float("inf")), "temperature"),
        ((1, 2), SamplingParams(temperature=-1e-9), "temperature"),
        ((1, 2), SamplingParams(stop=("a",) * (MAX_STOP_SEQUENCES + 1)), "stop sequences"),
        ((1, 2), SamplingParams(stop=("a" * (MAX_STOP_SEQUENCE_CHARS + 1),)), "stop sequence may"),
        ((1, 10_000), SamplingParams(), "token ids"),
    ],
)
def test_bad_requests_are_clear_errors(make_engine, prompt, params, message: str) -> None:
    with pytest.raises(GorgonError, match=message):
        make_engine().add(GenerationRequest("bad", prompt, params))


def test_max_batch_size_queues_the_rest(make_engine) -> None:
    engine = make_engine(max_batch_size=2)
    for name in PROMPTS:
        engine.add(_request(name, 5))
    first_events = engine.step()
    assert {event.request_id for event in first_events} == {"short", "medium"}
    collected: dict[str, list[TokenEvent]] = {}
    _drain(engine, collected)
    assert set(collected) == {"short", "medium", "long", "other"}


def test_more_messages_than_the_context_has_tokens_are_refused_before_templating(make_engine) -> None:
    engine = make_engine()
    messages = [ChatMessage("user", "hi")] * (engine.info.context_length + 1)
    with pytest.raises(ContextOverflowError, match="messages cannot fit"):
        engine.encode(messages)


def test_chat_without_template_is_a_clear_error(make_engine) -> None:
    with pytest.raises(GorgonError, match="no chat template"):
        make_engine().encode([ChatMessage("user", "hi")])


def test_tree_shipped_beside_the_heads_is_used(make_engine, tmp_path) -> None:
    (tmp_path / "medusa_choices.json").write_text("[[0], [1], [0, 0], [2]]")
    engine = make_engine(random_heads(), heads_path=tmp_path)
    trees = {shape.name: shape.num_nodes for shape in engine.scheduler.selector.shapes}
    assert trees["heads_tree"] == 5
    assert "plain" in trees


def test_heads_draft_only_from_the_shipped_draft_vocabulary(make_engine, tmp_path) -> None:
    vocabulary = [7, 8, 9, 10, 11, 12, 13, 30, 31, 32, 33, 34]
    (tmp_path / "draft_vocab.json").write_text(json.dumps(vocabulary))
    engine = make_engine(random_heads(), heads_path=tmp_path, draft_vocab_size=10)
    engine.add(_request("medium"))
    engine.step()  # the prefill drafts for the first speculative step
    assert set(engine.batch.draft_topk.flatten().tolist()) <= set(vocabulary[:10])
    plain = _tokens(_alone(make_engine, _request("medium")))
    collected: dict[str, list[TokenEvent]] = {}
    _drain(engine, collected)
    assert plain[:1] + _tokens(collected["medium"]) == plain


def test_a_draft_vocabulary_with_foreign_tokens_is_refused(make_engine, tmp_path) -> None:
    (tmp_path / "draft_vocab.json").write_text(json.dumps([1, 2, 10**9]))
    with pytest.raises(GorgonError, match="token ids"):
        make_engine(random_heads(), heads_path=tmp_path)


def test_recurrent_heads_give_the_plain_greedy_output_alone_and_batched(make_engine) -> None:
    heads = random_heads(recurrent=True)
    names = ("short", "medium", "long", "other")
    plain = {name: _tokens(_alone(make_engine, _request(name, 24))) for name in names}
    alone = {name: _tokens(_alone(make_engine, _request(name, 24), heads)) for name in names}
    engine = make_engine(heads, medusa_choices="cpu_12", cycle_shapes=True)
    for name in names:
        engine.add(_request(name, 24))
    collected: dict[str, list[TokenEvent]] = {}
    _drain(engine, collected)
    assert alone == plain
    assert {name: _tokens(events) for name, events in collected.items()} == plain


def test_a_tree_is_cut_to_the_nodes_recurrent_heads_can_fill(make_engine) -> None:
    engine = make_engine(random_heads(recurrent=True), medusa_choices="cpu_12")
    tree = engine.scheduler.selector.shapes[-1]
    assert tree.choices == ((0,), (0, 0), (0, 0, 0), (1,), (2,), (0, 1), (0, 0, 1))  # chain first
    assert tree.lookahead and tree.spine_nodes == 4


def test_a_plain_steps_drafting_for_the_next_step_is_not_counted_as_plain_cost(
    make_engine, monkeypatch
) -> None:
    """A plain step before a speculative one drafts for it; timing that drafting as plain's cost made plain look
    slower than it runs (the selector then favours speculation). Speculative steps keep their drafting. The
    drafting takes `slow_drafting` seconds on a clock that only drafting moves, so how fast this machine runs the
    tiny model (a loaded one once took 85 ms for a plain step) cannot decide the test."""
    from gorgon.engine import decode

    slow_drafting = 10.0
    real_draft, real_clock = decode.draft, time.perf_counter
    drafted_seconds = [0.0]

    def slow_draft(parts, hidden, next_tokens):
        drafted_seconds[0] += slow_drafting
        return real_draft(parts, hidden, next_tokens)

    monkeypatch.setattr(decode, "draft", slow_draft)
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + drafted_seconds[0])
    engine = make_engine(random_heads(), cycle_shapes=True)
    engine.add(_request("short", 12))
    _drain(engine, {})
    plain_times = list(engine.scheduler.selector.step_seconds[("plain", 1)].recent)
    chain_times = list(
        engine.scheduler.selector.step_seconds[(engine.scheduler.selector.shapes[1].name, 1)].recent
    )
    assert plain_times and chain_times
    assert max(plain_times) < slow_drafting <= min(chain_times)


SMALLEST_FLOAT = 5e-324


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": SMALLEST_FLOAT},
        {"temperature": 1e-40, "top_p": SMALLEST_FLOAT},
        {"temperature": 2.0, "top_p": SMALLEST_FLOAT},
    ],
    ids=["smallest-temperature", "tiny-temperature-smallest-top-p", "hottest-smallest-top-p"],
)
def test_extreme_sampling_values_decode_as_greedy(make_engine, params: dict) -> None:
    """Below the greedy threshold, or with only the top token inside top_p, a row decodes the greedy tokens
    (plain decoding: typical acceptance of drafts does not apply top_p)."""
    greedy = _alone(make_engine, _request("medium", 12))
    extreme = _alone(make_engine, _request("medium", 12, **params))
    assert _tokens(extreme) == _tokens(greedy)


@pytest.mark.parametrize("seed", [-(2**63), 2**63 - 1])
def test_seeds_at_both_ends_of_int64_sample_reproducibly(make_engine, seed: int) -> None:
    runs = [_tokens(_alone(make_engine, _request("short", 10, temperature=1.5, seed=seed))) for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 10


def _run_batch(engine, requests: list[GenerationRequest]) -> dict[str, list[TokenEvent]]:
    for request in requests:
        engine.add(request)
    collected: dict[str, list[TokenEvent]] = {}
    _drain(engine, collected)
    return collected


def test_a_row_whose_sampling_fails_ends_alone_and_the_batch_goes_on(make_engine, monkeypatch) -> None:
    real_sample = sampling.sample_token

    def failing_for_one_row(logits: torch.Tensor, row: sampling.RowSampling) -> int:
        if row.top_p == 0.5:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real_sample(logits, row)

    monkeypatch.setattr(sampling, "sample_token", failing_for_one_row)
    alone = _alone(make_engine, _request("long", 15))
    engine = make_engine(random_heads(), cycle_shapes=True)
    collected = _run_batch(
        engine, [_request("long", 15), _request("short", 15, temperature=1.0, top_p=0.5, seed=1)]
    )
    (failed,) = collected["short"]
    assert failed.error is not None and "sampling failed" in failed.error
    assert failed.finish_reason is None and failed.token_ids == ()
    assert _tokens(collected["long"]) == _tokens(alone)
    assert engine.num_active == 0 and engine.batch is None


def test_a_row_whose_detokenising_fails_ends_alone(make_engine, monkeypatch) -> None:
    engine = make_engine()
    engine.add(_request("other", 10))
    engine.add(_request("medium", 10))
    _ = engine.step()  # prefill: both rows are in the batch
    (row,) = [row for row in engine.batch.rows if row.request_id == "other"]

    def broken(_: object) -> str:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(row.detokenizer, "add", broken)
    collected: dict[str, list[TokenEvent]] = {}
    _drain(engine, collected)
    assert collected["other"][-1].error is not None and "detokenising failed" in collected["other"][-1].error
    assert len(collected["other"]) == 1
    assert collected["medium"][-1].finish_reason is FinishReason.LENGTH
    assert _tokens(collected["medium"]) == _tokens(_alone(make_engine, _request("medium", 10)))[1:]


def test_rows_arriving_together_join_one_cache_and_leave_it_in_place(make_engine) -> None:
    """The first prefill step keeps spare cache rows for the prompts still waiting; the next steps prefill into
    them, and rows finishing at different steps close up in place: one pool, and every row's tokens as alone."""
    engine = make_engine(random_heads(), cycle_shapes=True, prefill_chunk_tokens=10)
    requests = [
        _request(name, max_new_tokens=4 + 3 * index) for index, name in enumerate(PROMPTS) if name != "long"
    ]
    for request in requests:
        engine.add(request)
    collected: dict[str, list[TokenEvent]] = {}
    for event in engine.step():  # "short" alone: 3 + 7 tokens would pass the 10 of a prefill step
        collected.setdefault(event.request_id, []).append(event)
    pool = engine.batch.cache.pool
    assert engine.batch.cache.pool_rows == len(requests)
    while engine.num_active:
        for event in engine.step():
            collected.setdefault(event.request_id, []).append(event)
        assert engine.batch is None or engine.batch.cache.pool is pool
    for request in requests:
        assert _tokens(collected[request.request_id]) == _tokens(_alone(make_engine, request, random_heads()))


def test_a_failed_prefill_fails_its_row_alone(make_engine, monkeypatch) -> None:
    """The joining rows are prefilled in one forward; when it fails, each is prefilled alone, and only the row
    that fails alone ends with an error."""
    engine = make_engine()
    real_prefill = engine._prefill_group

    def failing_for_long_prompts(rows):
        if any(row.request_id == "long" for row in rows):
            raise RuntimeError("out of memory")
        return real_prefill(rows)

    monkeypatch.setattr(engine, "_prefill_group", failing_for_long_prompts)
    collected = _run_batch(engine, [_request("long", 8), _request("short", 8)])
    assert [event.error for event in collected["long"]] == ["prefill failed: out of memory"]
    assert _tokens(collected["short"]) == _tokens(_alone(make_engine, _request("short", 8)))


def test_running_out_of_memory_in_a_prefill_fails_the_step_and_leaves_the_engine_usable(
    make_engine, monkeypatch
) -> None:
    """Out of device memory is the batch's size, not a group's fault: the step raises (the worker retries its
    requests in a smaller batch), and once they are cancelled the engine decodes as before."""
    engine = make_engine()
    real_prefill = engine._prefill_group

    def out_of_memory_once(rows):
        monkeypatch.setattr(engine, "_prefill_group", real_prefill)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "_prefill_group", out_of_memory_once)
    engine.add(_request("long", 8))
    engine.add(_request("short", 8))
    with pytest.raises(torch.OutOfMemoryError):
        engine.step()
    for request_id in ("long", "short"):
        engine.cancel(request_id)
    assert engine.num_active == 0
    collected = _run_batch(engine, [_request("short", 8)])
    assert _tokens(collected["short"]) == _tokens(_alone(make_engine, _request("short", 8)))


LONG_PROMPT = tuple(range(40, 100))  # 60 tokens: four chunks of 16


def test_a_long_prompt_prefilled_in_chunks_gives_the_hf_greedy_tokens(make_engine, tiny_model) -> None:
    hf = tiny_model.generate(torch.tensor([LONG_PROMPT]), max_new_tokens=12, do_sample=False)
    request = GenerationRequest("chunked", LONG_PROMPT, SamplingParams(max_new_tokens=12))
    for heads in (None, random_heads()):
        engine = make_engine(heads, cycle_shapes=heads is not None, prefill_chunk_tokens=16)
        collected = _run_batch(engine, [request])
        assert _tokens(collected["chunked"]) == hf[0, len(LONG_PROMPT) :].tolist()
        assert collected["chunked"][0].prompt_tokens == len(LONG_PROMPT)


def test_running_rows_decode_between_the_chunks_of_a_long_prompt(make_engine) -> None:
    engine = make_engine(prefill_chunk_tokens=16)
    engine.add(_request("short", 30))
    assert [event.request_id for event in engine.step()] == ["short"]  # its prefill
    engine.add(GenerationRequest("chunked", LONG_PROMPT, SamplingParams(max_new_tokens=5)))
    produced = [sorted(event.request_id for event in engine.step()) for _ in range(9)]
    # the step that takes the long prompt in, then chunk / decode in turns; the last chunk's step emits its first token
    assert produced == [[], [], ["short"], [], ["short"], [], ["short"], ["chunked"], ["chunked", "short"]]
    assert engine.num_active == 2


def test_a_chunked_prefill_can_be_cancelled_and_fails_alone(make_engine, monkeypatch) -> None:
    engine = make_engine(prefill_chunk_tokens=16)
    engine.add(GenerationRequest("cancelled", LONG_PROMPT, SamplingParams(max_new_tokens=5)))
    engine.step()
    engine.step()
    engine.cancel("cancelled")
    assert engine.num_active == 0 and engine.partial == []
    engine.add(GenerationRequest("failing", LONG_PROMPT, SamplingParams(max_new_tokens=5)))
    engine.add(_request("short", 6))

    def broken(*_: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(medusa_engine, "prefill_chunk", broken)
    collected: dict[str, list[TokenEvent]] = {}
    _drain(engine, collected)
    assert [event.error for event in collected["failing"]] == ["prefill failed: out of memory"]
    assert collected["short"][-1].finish_reason is FinishReason.LENGTH
