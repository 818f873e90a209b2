"""Logits processors (penalties, logit bias, min_tokens) and the finish rules that go with them (ignore_eos,
stop_token_ids): what each does to crafted logits, and that greedy speculative output with them, in every step
shape, alone and batched beside rows without them, is the plain greedy output with them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import pytest
import torch
from engine_tiny import (
    EOS_ID,
    VOCAB,
    emitted_tokens,
    empty_cache,
    looping_llama,
    random_heads,
    run_to_completion,
)

from gorgon.core.errors import GorgonError
from gorgon.engine.decode import StepOutcome, prefill, speculative_step
from gorgon.engine.drafting.heads import DRAFT_TOPK
from gorgon.engine.interface import FinishReason, GenerationRequest, SamplingParams, TokenEvent
from gorgon.engine.logits_processing import (
    LogitBias,
    MinTokens,
    PresenceFrequencyPenalty,
    RepetitionPenalty,
    TokenCounts,
    commit_tokens,
    sampling_processors,
)
from gorgon.engine.parts import ModelParts
from gorgon.engine.sampling import RowSampling, TypicalAcceptance, processed_logits, right_after_committed
from gorgon.engine.tree import TreeBuffers, build_tree_buffers, chain

CPU = torch.device("cpu")
NUM_HEADS = 3

# --- each processor on crafted logits ----------------------------------------------------------------------


def test_token_counts_add_each_positions_continuation_to_the_committed_counts() -> None:
    counts = TokenCounts(6, CPU, initial=[1, 1, 2])
    at = counts.at_positions([[], [3], [3, 1, 3]])
    assert at.tolist() == [
        [0, 2, 1, 0, 0, 0],
        [0, 2, 1, 1, 0, 0],
        [0, 3, 1, 2, 0, 0],
    ]
    assert counts.counts.tolist() == [0, 2, 1, 0, 0, 0], "positions do not change the committed counts"


def test_presence_and_frequency_penalties_count_generated_tokens_and_continuations() -> None:
    penalty = PresenceFrequencyPenalty(presence=0.5, frequency=0.25, vocab_size=5, device=CPU)
    penalty.commit([2, 2])
    adjusted = penalty.adjust(torch.zeros(2, 5), [[], [4]])
    expected_first = [0.0, 0.0, -(0.5 + 2 * 0.25), 0.0, 0.0]
    assert adjusted.tolist() == [expected_first, [*expected_first[:4], -(0.5 + 0.25)]]


def test_repetition_penalty_covers_the_prompt_and_divides_positive_logits_multiplies_negative_ones() -> None:
    penalty = RepetitionPenalty(2.0, prompt_ids=[0, 1], vocab_size=4, device=CPU)
    logits = torch.tensor([[4.0, -4.0, 4.0, -4.0], [4.0, -4.0, 4.0, -4.0]])
    adjusted = penalty.adjust(logits.clone(), [[], [2]])
    assert adjusted.tolist() == [[2.0, -8.0, 4.0, -4.0], [2.0, -8.0, 2.0, -4.0]]
    penalty.commit([3])
    assert penalty.adjust(logits.clone(), [[]])[0].tolist() == [2.0, -8.0, 4.0, -8.0]


def test_logit_bias_adds_to_the_named_tokens_only() -> None:
    bias = LogitBias([(1, 5.0), (3, -100.0)], vocab_size=4, device=CPU)
    assert bias.adjust(torch.ones(1, 4), [[]]).tolist() == [[1.0, 6.0, 1.0, -99.0]]


def test_min_tokens_masks_ending_tokens_until_enough_are_generated_counting_the_continuation() -> None:
    minimum = MinTokens(3, banned=[0, 2], device=CPU)
    minimum.commit([5])
    adjusted = minimum.adjust(torch.zeros(3, 4), [[], [7], [7, 8]])  # 1, 2, 3 tokens generated before each
    masked = float("-inf")
    assert adjusted.tolist() == [[masked, 0.0, masked, 0.0], [masked, 0.0, masked, 0.0], [0.0] * 4]
    minimum.commit([7, 8])
    assert minimum.adjust(torch.zeros(1, 4), [[]]).tolist() == [[0.0] * 4]


def _kinds(params: SamplingParams) -> list[type]:
    built = sampling_processors(params, (1, 2), eos_token_ids={EOS_ID}, vocab_size=VOCAB, device=CPU)
    return [type(processor) for processor in built]


def test_default_parameters_build_no_processors_and_each_parameter_its_own() -> None:
    assert _kinds(SamplingParams()) == []
    assert _kinds(SamplingParams(min_tokens=2, ignore_eos=True)) == [], "nothing left to mask"
    everything = SamplingParams(
        logit_bias=((3, 1.0),),
        min_tokens=2,
        repetition_penalty=1.2,
        presence_penalty=0.1,
        frequency_penalty=0.1,
    )
    assert _kinds(everything) == [LogitBias, MinTokens, RepetitionPenalty, PresenceFrequencyPenalty]


def test_with_ignore_eos_min_tokens_masks_the_stop_token_ids_but_not_eos() -> None:
    params = SamplingParams(min_tokens=2, ignore_eos=True, stop_token_ids=(7,))
    (minimum,) = sampling_processors(params, (1,), eos_token_ids={EOS_ID}, vocab_size=VOCAB, device=CPU)
    adjusted = minimum.adjust(torch.zeros(1, VOCAB), [[]])
    assert adjusted[0, 7] == float("-inf") and adjusted[0, EOS_ID] == 0.0


class _Failing:
    def adjust(self, logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        logits.fill_(0.0)
        raise ValueError("grammar exhausted")

    def commit(self, tokens: Sequence[int]) -> None:
        raise AssertionError("never committed")


def test_rows_without_processors_keep_their_logits_and_a_failing_processor_fails_its_row_alone() -> None:
    logits = torch.randn(3, 1, 50).to(torch.bfloat16)
    plain_rows = [RowSampling()] * 3
    same, failures = processed_logits(logits, right_after_committed, plain_rows)
    assert same is logits and failures == {}
    rows = [
        RowSampling(),
        RowSampling(processors=(LogitBias([(4, 1.0)], 50, CPU),)),
        RowSampling(processors=(_Failing(),)),
    ]
    adjusted, failures = processed_logits(logits, right_after_committed, rows)
    assert list(failures) == [2] and "grammar exhausted" in failures[2]
    assert adjusted.dtype == torch.float32
    assert torch.equal(adjusted[0], logits[0].float()) and torch.equal(adjusted[2], logits[2].float())
    assert adjusted[1, 0, 4] == logits[1, 0, 4].float() + 1.0


# --- decode steps: speculative with oracle drafts against plain, with processors ------------------------------

PROCESSED_PARAMS = {
    "repetition": SamplingParams(repetition_penalty=1.3),
    "presence-frequency": SamplingParams(presence_penalty=0.8, frequency_penalty=0.6),
    "logit-bias": SamplingParams(logit_bias=((15, 3.0), (173, -2.0), (40, 2.5))),
    "min-tokens": SamplingParams(min_tokens=12, logit_bias=((EOS_ID, 6.0),)),
    "everything": SamplingParams(
        repetition_penalty=1.2,
        presence_penalty=0.3,
        frequency_penalty=0.3,
        logit_bias=((EOS_ID, 4.0), (63, 1.5)),
        min_tokens=9,
    ),
}

TREES = {
    "chain": build_tree_buffers(chain(NUM_HEADS)),
    "tree": build_tree_buffers([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]),
    "lookahead": build_tree_buffers([(0,), (1,), (2,), (0, 0), (0, 1), (0, 0, 0), (0, 0, 1)], lookahead=True),
}


@pytest.fixture(scope="module")
def looping_parts() -> ModelParts:
    model = looping_llama()
    return ModelParts(model.get_decoder(), model.get_output_embeddings(), random_heads(NUM_HEADS))


def _rows(params: Sequence[SamplingParams], prompts: Sequence[Sequence[int]]) -> list[RowSampling]:
    return [
        RowSampling(
            processors=tuple(
                sampling_processors(row, prompt, eos_token_ids={EOS_ID}, vocab_size=VOCAB, device=CPU)
            )
        )
        for row, prompt in zip(params, prompts, strict=True)
    ]


def _commit(rows: Sequence[RowSampling], outcome: StepOutcome, produced: list[list[int]]) -> None:
    for row, tokens, output in zip(rows, outcome.emitted, produced, strict=True):
        commit_tokens(row.processors, tokens)
        output.extend(tokens)


def _plain_output(parts, prompts, params, count: int) -> list[list[int]]:
    rows = _rows(params, prompts)
    cache = empty_cache(looping_llama(), len(prompts), 128)
    produced: list[list[int]] = [[] for _ in prompts]
    outcome = prefill(parts, cache, prompts, rows)
    _commit(rows, outcome, produced)
    plain = build_tree_buffers(())
    while min(len(tokens) for tokens in produced) < count:
        outcome = speculative_step(
            parts, cache, outcome.next_tokens, None, plain, rows, TypicalAcceptance(), want_drafts=False
        )
        _commit(rows, outcome, produced)
    return produced


def _oracle_drafts(futures: Sequence[Sequence[int]], correct_heads: int, swap: bool) -> torch.Tensor:
    """Rank 0 holds the true token for the first `correct_heads` heads; with `swap` head 0's true token sits at
    rank 1 (a sibling path, or a lookahead leaf, holds it)."""
    drafts = torch.zeros(len(futures), NUM_HEADS, DRAFT_TOPK, dtype=torch.long)
    for row, future in enumerate(futures):
        for head in range(NUM_HEADS):
            truth = future[head] if head < len(future) else 0
            ranked = [(truth + 1 + rank) % VOCAB for rank in range(DRAFT_TOPK)]
            if head < correct_heads:
                ranked[0] = truth
            drafts[row, head] = torch.tensor(ranked)
        if swap:
            drafts[row, 0, :2] = drafts[row, 0, :2].flip(0)
    return drafts


def _speculative_output(parts, prompts, params, tree: TreeBuffers, reference, count: int):
    rows = _rows(params, prompts)
    cache = empty_cache(looping_llama(), len(prompts), 128)
    produced: list[list[int]] = [[] for _ in prompts]
    outcome = prefill(parts, cache, prompts, rows)
    _commit(rows, outcome, produced)
    accepted = 0
    step = 0
    while min(len(tokens) for tokens in produced) < count:
        futures = [truth[len(done) :] for truth, done in zip(reference, produced, strict=True)]
        drafts = _oracle_drafts(futures, correct_heads=step % (NUM_HEADS + 1), swap=step % 3 == 2)
        outcome = speculative_step(
            parts, cache, outcome.next_tokens, drafts, tree, rows, TypicalAcceptance(), want_drafts=False
        )
        accepted += sum(outcome.accepted_drafts)
        _commit(rows, outcome, produced)
        step += 1
    return produced, accepted


PROMPTS = ([3, 1, 4, 1, 5], [9, 8, 7, 6, 5], [15, 173, 63, 15], [200, 3, 3, 141])


@pytest.mark.parametrize("tree_name", list(TREES))
@pytest.mark.parametrize("params_name", list(PROCESSED_PARAMS))
def test_greedy_speculative_steps_with_processors_give_the_plain_steps_output(
    looping_parts, params_name: str, tree_name: str
) -> None:
    """Oracle drafts that are right for a varying number of heads (through a sibling now and then): a step
    accepts exactly the drafts plain decoding with the same processors would have emitted. Alone, and in a
    batch where two rows have no processors."""
    params = PROCESSED_PARAMS[params_name]
    count = 24
    for batch_params in ([params], [params, SamplingParams(), params, SamplingParams()]):
        prompts = [list(prompt) for prompt in PROMPTS[: len(batch_params)]]
        reference = _plain_output(looping_parts, prompts, batch_params, count + NUM_HEADS + 1)
        produced, accepted = _speculative_output(
            looping_parts, prompts, batch_params, TREES[tree_name], reference, count
        )
        for row, tokens in enumerate(produced):
            assert tokens == reference[row][: len(tokens)], (params_name, tree_name, row)
        assert accepted >= count // 2, "the drafts were accepted"
    unprocessed = _plain_output(looping_parts, [list(PROMPTS[0])], [SamplingParams()], count)
    assert reference[0][:count] != unprocessed[0][:count], "the processors change the output"


# --- the engine: speculative against plain, finish rules ---------------------------------------------------

ENGINE_PROMPTS = {
    "a": (3, 1, 4, 1, 5),
    "b": (9, 8, 7, 6, 5, 4),
    "c": (15, 173, 63),
    "d": (200, 3, 3, 141, 90),
}
HEADS = {
    "chain-and-tree": {"heads": random_heads(NUM_HEADS), "medusa_choices": "cpu_12"},
    "chain-and-lookahead": {"heads": random_heads(NUM_HEADS, recurrent=True), "medusa_choices": "cpu_12"},
}


def _text(events: list[TokenEvent]) -> str:
    return "".join(event.text for event in events)


def _requests(params: dict[str, SamplingParams]) -> list[GenerationRequest]:
    return [GenerationRequest(name, ENGINE_PROMPTS[name], row) for name, row in params.items()]


@pytest.mark.parametrize("heads_name", list(HEADS))
@pytest.mark.parametrize("params_name", ["repetition", "presence-frequency", "everything"])
def test_the_engine_speculating_gives_the_plain_output_with_processors(
    make_engine, params_name: str, heads_name: str
) -> None:
    model = looping_llama()
    batch = {
        "a": dataclasses.replace(PROCESSED_PARAMS[params_name], max_new_tokens=36),
        "b": SamplingParams(max_new_tokens=30),
        "c": SamplingParams(max_new_tokens=40, repetition_penalty=1.1, presence_penalty=0.5),
        "d": SamplingParams(max_new_tokens=25),
    }
    plain = {
        name: emitted_tokens(run_to_completion(make_engine(model=model), _requests({name: row}))[name])
        for name, row in batch.items()
    }
    settings = HEADS[heads_name]
    alone = run_to_completion(
        make_engine(cycle_shapes=True, model=model, **settings), _requests({"a": batch["a"]})
    )
    assert emitted_tokens(alone["a"]) == plain["a"]
    batched = run_to_completion(make_engine(cycle_shapes=True, model=model, **settings), _requests(batch))
    assert {name: emitted_tokens(events) for name, events in batched.items()} == plain
    processed_rows_accepted = sum(event.accepted_tokens for name in "ac" for event in batched[name])
    assert processed_rows_accepted > 0, "rows with processors accepted drafts"


@pytest.mark.parametrize("heads", [None, "chain-and-tree", "chain-and-lookahead"])
def test_a_logit_bias_of_100_forces_its_token(make_engine, tokenizer, heads: str | None) -> None:
    settings = HEADS[heads] if heads else {}
    request = GenerationRequest(
        "a", ENGINE_PROMPTS["a"], SamplingParams(max_new_tokens=10, logit_bias=((42, 100.0),))
    )
    events = run_to_completion(make_engine(cycle_shapes=heads is not None, **settings), [request])["a"]
    assert emitted_tokens(events) == [42] * 10
    assert _text(events) == tokenizer.decode([42]) * 10 and events[-1].finish_reason is FinishReason.LENGTH


EOS_FORCED = ((EOS_ID, 100.0),)


@pytest.mark.parametrize("heads", [None, "chain-and-lookahead"])
def test_min_tokens_keeps_eos_away_until_enough_tokens_are_generated(make_engine, heads: str | None) -> None:
    settings = HEADS[heads] if heads else {}
    engine = make_engine(cycle_shapes=heads is not None, **settings)
    eager = GenerationRequest(
        "eager", ENGINE_PROMPTS["b"], SamplingParams(max_new_tokens=20, logit_bias=EOS_FORCED)
    )
    held = GenerationRequest(
        "held", ENGINE_PROMPTS["b"], SamplingParams(max_new_tokens=20, logit_bias=EOS_FORCED, min_tokens=6)
    )
    collected = run_to_completion(engine, [eager, held])
    assert emitted_tokens(collected["eager"]) == [EOS_ID] and _text(collected["eager"]) == ""
    tokens = emitted_tokens(collected["held"])
    assert len(tokens) == 7 and EOS_ID not in tokens[:6] and tokens[6] == EOS_ID
    assert collected["held"][-1].finish_reason is FinishReason.STOP
    assert collected["held"][-1].completion_tokens == 7


@pytest.mark.parametrize("heads", [None, "chain-and-tree"])
def test_ignore_eos_runs_to_max_tokens_and_eos_shows_no_text(make_engine, heads: str | None) -> None:
    settings = HEADS[heads] if heads else {}
    params = SamplingParams(max_new_tokens=9, logit_bias=EOS_FORCED, ignore_eos=True)
    events = run_to_completion(
        make_engine(cycle_shapes=heads is not None, **settings), [GenerationRequest("a", (5, 6), params)]
    )["a"]
    assert emitted_tokens(events) == [EOS_ID] * 9
    assert _text(events) == "" and events[-1].finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("heads", [None, "chain-and-tree", "chain-and-lookahead"])
def test_a_stop_token_ends_the_row_and_its_text_is_not_shown(
    make_engine, tokenizer, heads: str | None
) -> None:
    settings = HEADS[heads] if heads else {}
    free = emitted_tokens(
        run_to_completion(make_engine(), _requests({"d": SamplingParams(max_new_tokens=20)}))["d"]
    )
    position = next(index for index in range(3, len(free)) if free[index] not in free[:index])
    stop = free[position]
    params = SamplingParams(max_new_tokens=20, stop_token_ids=(stop,))
    events = run_to_completion(
        make_engine(cycle_shapes=heads is not None, **settings), _requests({"d": params})
    )["d"]
    assert emitted_tokens(events) == free[: position + 1]
    assert _text(events) == tokenizer.decode(free[:position], skip_special_tokens=True)
    assert events[-1].finish_reason is FinishReason.STOP


def test_min_tokens_holds_a_stop_token_back_too(make_engine, tokenizer) -> None:
    """The stop token outweighs every other, another token the rest: the other until min_tokens, then the stop."""
    stop, other = 42, 77
    bias = ((stop, 100.0), (other, 50.0))
    params = SamplingParams(max_new_tokens=20, stop_token_ids=(stop,), logit_bias=bias, min_tokens=4)
    events = run_to_completion(
        make_engine(random_heads(NUM_HEADS), cycle_shapes=True), _requests({"c": params})
    )["c"]
    assert emitted_tokens(events) == [other] * 4 + [stop]
    assert _text(events) == tokenizer.decode([other]) * 4
    assert events[-1].finish_reason is FinishReason.STOP


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (SamplingParams(logit_bias=((VOCAB, 1.0),)), "logit_bias"),
        (SamplingParams(stop_token_ids=(3, VOCAB + 5)), "stop_token_ids"),
    ],
)
def test_token_ids_outside_the_vocabulary_are_refused_naming_the_parameter(
    make_engine, params, param
) -> None:
    engine = make_engine()
    with pytest.raises(Exception) as raised:
        engine.add(GenerationRequest("bad", (1, 2), params))
    assert getattr(raised.value, "param", None) == param and engine.num_active == 0


FLAG_FORMAT = json.dumps(
    {
        "type": "json_schema",
        "json_schema": {
            "name": "flag",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}, "tag": {"enum": ["x", "y"]}},
                "required": ["ok", "tag"],
                "additionalProperties": False,
            },
        },
    }
)


@pytest.mark.parametrize("heads", ["chain-and-tree", "chain-and-lookahead"])
def test_a_response_formats_grammar_holds_speculating_or_not(make_engine, heads: str) -> None:
    """The grammar runs last among the row's processors; greedy speculative output equals plain output, beside
    a free row, and a reply that completes its JSON ends there, min_tokens or not (the grammar has the last
    word)."""
    batch = {
        "a": SamplingParams(
            max_new_tokens=60, response_format=FLAG_FORMAT, min_tokens=40, presence_penalty=0.3
        ),
        "b": SamplingParams(max_new_tokens=20),
    }
    plain = run_to_completion(make_engine(), _requests(batch))
    speculative = run_to_completion(make_engine(cycle_shapes=True, **HEADS[heads]), _requests(batch))
    assert {name: emitted_tokens(events) for name, events in speculative.items()} == {
        name: emitted_tokens(events) for name, events in plain.items()
    }
    reply = json.loads(_text(plain["a"]))
    assert set(reply) == {"ok", "tag"} and isinstance(reply["ok"], bool) and reply["tag"] in ("x", "y")
    assert plain["a"][-1].finish_reason is FinishReason.STOP and emitted_tokens(plain["a"])[-1] == EOS_ID
    assert plain["a"][-1].completion_tokens < batch["a"].min_tokens


def test_a_malformed_response_format_is_refused_at_add(make_engine) -> None:
    engine = make_engine()
    with pytest.raises(GorgonError) as raised:
        engine.add(GenerationRequest("bad", (1, 2), SamplingParams(response_format='{"type": "yaml"}')))
    assert raised.value.param == "response_format" and engine.num_active == 0


class _RefusingCommit:
    """Leaves logits alone and refuses every committed token, as a grammar does for a token it forbids."""

    def adjust(self, logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        return logits

    def commit(self, tokens: Sequence[int]) -> None:
        raise ValueError("the reply left its grammar")


def test_a_row_whose_processors_refuse_its_tokens_ends_alone(make_engine, monkeypatch) -> None:
    engine = make_engine(cycle_shapes=True, **HEADS["chain-and-tree"])
    real_processors = engine._row_processors

    def refusing_for_a(request: GenerationRequest) -> list:
        extra = [_RefusingCommit()] if request.request_id == "a" else []
        return real_processors(request) + extra

    monkeypatch.setattr(engine, "_row_processors", refusing_for_a)
    batch = {"a": SamplingParams(max_new_tokens=10), "b": SamplingParams(max_new_tokens=10)}
    collected = run_to_completion(engine, _requests(batch))
    (failed,) = collected["a"]
    assert failed.error == "logits processing failed: the reply left its grammar" and failed.token_ids == ()
    alone = run_to_completion(make_engine(), _requests({"b": batch["b"]}))["b"]
    assert emitted_tokens(collected["b"]) == emitted_tokens(alone)


@pytest.mark.parametrize("params_name", ["presence-frequency", "min-tokens", "everything"])
def test_a_resumed_request_continues_as_if_never_interrupted(make_engine, params_name: str) -> None:
    """A request resumed after a failure carries its earlier output at the end of its prompt: the processors
    count it as output (penalties, min_tokens), so the continuation is the uninterrupted run's."""
    model = looping_llama()
    params = dataclasses.replace(PROCESSED_PARAMS[params_name], max_new_tokens=24)
    whole = emitted_tokens(run_to_completion(make_engine(model=model), _requests({"a": params}))["a"])
    done = 5
    resumed = GenerationRequest(
        "a",
        tuple(ENGINE_PROMPTS["a"]) + tuple(whole[:done]),
        dataclasses.replace(params, max_new_tokens=params.max_new_tokens - done),
        resumed_tokens=done,
    )
    assert emitted_tokens(run_to_completion(make_engine(model=model), [resumed])["a"]) == whole[done:]
    as_prompt = dataclasses.replace(
        resumed, resumed_tokens=0, params=dataclasses.replace(resumed.params, min_tokens=0)
    )
    assert emitted_tokens(run_to_completion(make_engine(model=model), [as_prompt])["a"]) != whole[done:]
