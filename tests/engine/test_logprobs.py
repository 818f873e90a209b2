"""Log-probabilities of emitted tokens: the raw model's, one per token with its top alternatives, the same whether
the tokens were drafted and verified or decoded one by one."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from engine_tiny import VOCAB, emitted_tokens, looping_llama, random_heads, run_to_completion
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from gorgon.engine.interface import GenerationRequest, SamplingParams, TokenEvent
from gorgon.engine.logprobs import TokenTexts, emitted_logprobs

LOGPROB_TOLERANCE = 1e-4
"""float32 logits. A verified node rounds as a plain step does (engine/forward.py), so speculative and plain values
are usually bit-identical; kernels that round a row by the rows beside it, and the engine's packed linears against
the model's own forward (a few 1e-6 on these models), stay far inside this."""

PROMPTS = {
    "a": (5, 17, 99),
    "b": (7, 8, 9, 10, 11, 12, 13),
    "c": tuple(range(30, 52)),
    "d": (200, 3, 3, 141, 90),
}


def test_log_probabilities_over_the_vocabulary_sum_to_one_and_the_top_come_sorted() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, VOCAB) * 4
    every = emitted_logprobs(logits, [7, 0, 255], top=VOCAB)
    for position in range(3):
        total = torch.tensor(every.top_logprobs[position]).exp().sum()
        assert abs(float(total) - 1.0) < 1e-5
    top = emitted_logprobs(logits, [7, 0, 255], top=5)
    assert len(top) == 3 and [len(ids) for ids in top.top_ids] == [5, 5, 5]
    for position, token in enumerate([7, 0, 255]):
        values = top.top_logprobs[position]
        assert values == sorted(values, reverse=True)
        assert top.top_ids[position][0] == int(logits[position].argmax())
        assert top.logprobs[position] == pytest.approx(float(torch.log_softmax(logits[position], -1)[token]))
    assert emitted_logprobs(logits, [1, 2, 3], top=0).top_ids == [[], [], []]


def test_a_token_is_spelled_as_it_decodes_alone_with_its_utf8_bytes(tokenizer) -> None:
    texts = TokenTexts(tokenizer)
    (letter,) = tokenizer.encode("K")
    lead_byte = tokenizer.encode("é")[0]  # the first byte of a two-byte character decodes to U+FFFD alone
    assert texts.text(letter) == "K" and texts.utf8(letter) == (75,)
    assert texts.text(lead_byte) == "\ufffd" and texts.utf8(lead_byte) == (0xEF, 0xBF, 0xBD)
    assert texts.text(tokenizer.eos_token_id) == "<eos>", "special tokens are spelled out, as vLLM does"


def test_a_sentencepiece_pieces_leading_space_is_kept() -> None:
    """SentencePiece decoders drop the space of a text's first piece; vLLM puts it back for a token alone."""
    vocab = {"<unk>": 0, "\u2581Hello": 1, "world": 2}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert tokenizer.decode([1]) == "Hello"
    texts = TokenTexts(tokenizer)
    assert texts.text(1) == " Hello" and texts.text(2) == "world"


def _logprobs(events: list[TokenEvent]) -> list:
    entries = []
    for event in events:
        assert event.logprobs is not None and len(event.logprobs) == len(event.token_ids)
        entries += event.logprobs
    return entries


def _model_logprobs(model, prompt: Sequence[int], generated: Sequence[int]) -> torch.Tensor:
    """[len(generated), V]: the model's own log-softmax at each generated token's position, in one forward."""
    ids = torch.tensor([[*prompt, *generated]])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, dim=-1)


def _request(name: str, count: int = 16, **params: object) -> GenerationRequest:
    return GenerationRequest(name, PROMPTS[name], SamplingParams(max_new_tokens=count, **params))


@pytest.mark.parametrize("params", [{}, {"temperature": 0.9, "seed": 5, "use_speculative": False}])
def test_plain_decoding_reports_the_models_log_probabilities(
    make_engine, tiny_model, tokenizer, params
) -> None:
    events = run_to_completion(make_engine(), [_request("b", logprobs=3, **params)])["b"]
    tokens, entries = emitted_tokens(events), _logprobs(events)
    expected = _model_logprobs(tiny_model, PROMPTS["b"], tokens)
    for position, (token, entry) in enumerate(zip(tokens, entries, strict=True)):
        assert entry.logprob == pytest.approx(float(expected[position, token]), abs=LOGPROB_TOLERANCE)
        assert entry.token == tokenizer.decode([token]) and entry.token_bytes == tuple(entry.token.encode())
        best = expected[position].topk(3)
        assert [alternative.logprob for alternative in entry.top] == pytest.approx(
            best.values.tolist(), abs=LOGPROB_TOLERANCE
        )
        assert [tokenizer.decode([int(index)]) for index in best.indices] == [
            alternative.token for alternative in entry.top
        ]


def test_log_probabilities_are_the_raw_models_before_bias_and_penalties(make_engine, tiny_model) -> None:
    params = {"logprobs": 0, "logit_bias": ((42, 100.0),), "repetition_penalty": 1.5}
    events = run_to_completion(make_engine(), [_request("a", 6, **params)])["a"]
    assert emitted_tokens(events) == [42] * 6
    expected = _model_logprobs(tiny_model, PROMPTS["a"], [42] * 6)[:, 42]
    assert [entry.logprob for entry in _logprobs(events)] == pytest.approx(expected.tolist(), abs=1e-4)
    assert all(entry.top == () for entry in _logprobs(events))
    assert max(expected.tolist()) < -1.0, "the forced token is not what the model itself favours"


def test_rows_that_do_not_ask_get_none(make_engine) -> None:
    events = run_to_completion(make_engine(), [_request("a", 4)])["a"]
    assert all(event.logprobs is None for event in events)


@pytest.mark.parametrize("tree", ["cpu_12", "cpu_12-recurrent"])
def test_speculative_log_probabilities_equal_plain_ones_within_tolerance(make_engine, tree: str) -> None:
    """Every shape in turn (plain, chain, tree or lookahead), batched with rows that do not ask."""
    heads = random_heads(3, recurrent=tree.endswith("recurrent"))
    model = looping_llama()  # its loops are drafted by context lookup and accepted
    asking = {
        "a": _request("a", 24, logprobs=5),
        "c": _request("c", 20, logprobs=2, presence_penalty=0.5),
        "d": _request("d", 18, logprobs=0),
    }
    plain = {
        name: run_to_completion(make_engine(model=model), [request])[name] for name, request in asking.items()
    }
    engine = make_engine(heads, cycle_shapes=True, medusa_choices="cpu_12", model=model)
    batched = run_to_completion(engine, [*asking.values(), _request("b", 22)])
    assert all(event.logprobs is None for event in batched["b"])
    accepted = 0
    for name, expected_events in plain.items():
        assert emitted_tokens(batched[name]) == emitted_tokens(expected_events)
        for got, expected in zip(_logprobs(batched[name]), _logprobs(expected_events), strict=True):
            assert got.token == expected.token
            assert got.logprob == pytest.approx(expected.logprob, abs=LOGPROB_TOLERANCE)
            assert [top.token for top in got.top] == [top.token for top in expected.top]
            assert [top.logprob for top in got.top] == pytest.approx(
                [top.logprob for top in expected.top], abs=LOGPROB_TOLERANCE
            )
        accepted += sum(event.accepted_tokens for event in batched[name])
    assert accepted > 0, "some tokens came from verified drafts"
