"""Structured output: response_format parsing, the grammar processor's masks at committed positions and at tree
nodes, and replies decoded under it from random logits (they parse and validate against their schema); the same
for the tool-call format the API sends, and the engine speculating under it."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import jsonschema
import pytest
import torch
from engine_tiny import EOS_ID, VOCAB, random_heads
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from vicuna_tiny import write_sentencepiece_tokenizer

from gorgon.api.tool_calls import NO_PARAMETERS, ToolCalling
from gorgon.core.errors import GorgonError
from gorgon.engine.grammar import (
    GrammarCompiler,
    GrammarProcessor,
    GrammarViolationError,
    JsonGrammar,
    ToolCallGrammar,
    compiler_for,
    grammar_processors,
    parse_response_format,
)
from gorgon.engine.interface import FinishReason, GenerationRequest, SamplingParams, TokenEvent
from gorgon.engine.loader import default_model_source
from gorgon.engine.logits_processing import MinTokens, adjust_logits

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3},
        "where": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "properties": {
                        "x": {"type": "boolean"},
                        "y": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    "required": ["x"],
                    "additionalProperties": False,
                },
            ]
        },
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}
PADDED_VOCAB = VOCAB + 40
"""A logits width past the tokenizer's, as an lm_head padded to a multiple of 64."""


def json_schema_format(schema: object, *, strict: bool | None = True) -> str:
    spec: dict[str, object] = {"name": "reply", "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return json.dumps({"type": "json_schema", "json_schema": spec})


JSON_OBJECT = json.dumps({"type": "json_object"})


def processor_for(
    tokenizer: PreTrainedTokenizerBase, response_format: str, *, vocab_size: int, eos: int
) -> GrammarProcessor:
    params = SamplingParams(response_format=response_format)
    [processor] = grammar_processors(params, tokenizer, eos_token_ids={eos}, vocab_size=vocab_size)
    assert isinstance(processor, GrammarProcessor)
    return processor


def decode_randomly(
    processor: GrammarProcessor,
    tokenizer: PreTrainedTokenizerBase,
    *,
    vocab_size: int,
    eos: int,
    generator: torch.Generator,
    favoured: Sequence[int] = (),
    max_steps: int = 600,
) -> str:
    """Samples a reply from random logits under the grammar until EOS; at each step EOS must be allowed exactly
    where the text so far is a complete JSON document, and every forbidden token must be -inf while the allowed
    ones keep their logits. `favoured` tokens get a higher logit (to close strings and objects sooner)."""
    emitted: list[int] = []
    for _ in range(max_steps):
        logits = 2.0 * torch.randn(1, vocab_size, generator=generator)
        logits[0, list(favoured)] += 4.0
        adjusted = processor.adjust(logits.clone(), [()])
        allowed = torch.isfinite(adjusted[0])
        assert torch.equal(adjusted[0][allowed], logits[0][allowed])
        assert not allowed[len(tokenizer) :].any(), "a padding row of the lm_head was allowed"
        text = tokenizer.decode(emitted)
        assert bool(allowed[eos]) == parses(text), text
        token = int(torch.multinomial(torch.softmax(adjusted[0], dim=-1), 1, generator=generator))
        processor.commit([token])
        if token == eos:
            return text
        emitted.append(token)
    raise AssertionError(f"no EOS within {max_steps} tokens: {tokenizer.decode(emitted)!r}")


def parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def byte_ids(tokenizer: PreTrainedTokenizerBase, characters: str) -> list[int]:
    """The byte tokenizer's tokens of ASCII `characters`, one each."""
    ids = tokenizer.encode(characters, add_special_tokens=False)
    assert len(ids) == len(characters)
    return ids


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """Vicuna's kind: a 600-piece BPE sentencepiece model with byte fallback and a leading-space marker."""
    directory = tmp_path_factory.mktemp("sentencepiece")
    write_sentencepiece_tokenizer(directory)
    return AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("response_format", [None, json.dumps({"type": "text"})])
def test_free_text_has_no_processor(tokenizer: PreTrainedTokenizerBase, response_format: str | None) -> None:
    params = SamplingParams(response_format=response_format)
    assert grammar_processors(params, tokenizer, eos_token_ids={EOS_ID}, vocab_size=VOCAB) == []


def test_response_formats_parse_to_grammars() -> None:
    any_object = parse_response_format(JSON_OBJECT)
    assert any_object == JsonGrammar('{"type": "object"}', lenient=False)
    strict = parse_response_format(json_schema_format(PERSON))
    assert strict is not None and not strict.lenient
    assert list(json.loads(strict.schema)["properties"]) == list(PERSON["properties"])  # the client's order
    for not_strict in (False, None):
        grammar = parse_response_format(json_schema_format(PERSON, strict=not_strict))
        assert grammar is not None and grammar.lenient
    no_schema = parse_response_format(json.dumps({"type": "json_schema", "json_schema": {"name": "x"}}))
    assert no_schema is not None and json.loads(no_schema.schema) == {"type": "object"}


@pytest.mark.parametrize(
    ("response_format", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be an object"),
        (json.dumps({"type": "xml"}), "type must be one of"),
        (json.dumps({"type": "json_schema"}), "json_schema must be an object"),
        (json.dumps({"type": "json_schema", "json_schema": {"schema": [1]}}), "schema must be a JSON schema"),
        (json.dumps({"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}), "strict"),
        (json_schema_format({"type": "foo"}), "cannot be used"),
        (json_schema_format({"$ref": "#/$defs/missing"}), "cannot be used"),
        (json_schema_format({"type": "integer", "minimum": 5, "maximum": 1}), "cannot be used"),
        (json_schema_format({"type": "string", "pattern": "(("}), "cannot be used"),
        (json_schema_format({"type": "array", "uniqueItems": True}, strict=True), "uniqueItems"),
        (json_schema_format(True), "must be a JSON schema object"),
    ],
)
def test_invalid_response_formats_are_client_errors(
    tokenizer: PreTrainedTokenizerBase, response_format: str, complaint: str
) -> None:
    with pytest.raises(GorgonError, match=complaint) as caught:
        processor_for(tokenizer, response_format, vocab_size=VOCAB, eos=EOS_ID)
    assert caught.value.param == "response_format"
    assert caught.value.code == "invalid_request_error"


def test_keywords_the_grammar_cannot_enforce_are_ignored_without_strict(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "uniqueItems": True}
    processor = processor_for(
        tokenizer, json_schema_format(schema, strict=False), vocab_size=VOCAB, eos=EOS_ID
    )
    processor.commit(tokenizer.encode("[1, 1", add_special_tokens=False))
    allowed = torch.isfinite(processor.adjust(torch.zeros(1, VOCAB), [()]))[0]
    assert allowed[byte_ids(tokenizer, ",]")].all()  # items still integers, their uniqueness not enforced
    assert not allowed[byte_ids(tokenizer, "a")].any()


@pytest.mark.parametrize("vocab_size", [VOCAB, PADDED_VOCAB])
def test_replies_decoded_under_a_schema_validate(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
    generator = torch.Generator().manual_seed(vocab_size)
    for _ in range(30):
        processor = processor_for(tokenizer, json_schema_format(PERSON), vocab_size=vocab_size, eos=EOS_ID)
        text = decode_randomly(processor, tokenizer, vocab_size=vocab_size, eos=EOS_ID, generator=generator)
        jsonschema.validate(json.loads(text), PERSON)


def allowed_tokens(processor: GrammarProcessor, vocab_size: int) -> list[int]:
    return torch.isfinite(processor.adjust(torch.zeros(1, vocab_size), [()]))[0].nonzero().view(-1).tolist()


def test_replies_are_laid_out_as_json_dumps_does(tokenizer: PreTrainedTokenizerBase) -> None:
    """No whitespace but json.dumps' separators: a small model offered free whitespace may never stop."""
    processor = processor_for(tokenizer, JSON_OBJECT, vocab_size=VOCAB, eos=EOS_ID)
    processor.commit(tokenizer.encode('{"a"', add_special_tokens=False))
    assert allowed_tokens(processor, VOCAB) == byte_ids(tokenizer, ":")
    processor.commit(byte_ids(tokenizer, ":"))
    assert allowed_tokens(processor, VOCAB) == byte_ids(tokenizer, " ")
    processor.commit(byte_ids(tokenizer, " 1,"))
    assert allowed_tokens(processor, VOCAB) == byte_ids(tokenizer, " ")
    processor.commit(byte_ids(tokenizer, " "))
    assert allowed_tokens(processor, VOCAB) == byte_ids(tokenizer, '"')


def test_replies_decoded_as_json_objects_parse_to_objects(tokenizer: PreTrainedTokenizerBase) -> None:
    generator = torch.Generator().manual_seed(1)
    closing = [*byte_ids(tokenizer, '"}]'), EOS_ID]
    kinds: set[type] = set()
    for _ in range(30):
        processor = processor_for(tokenizer, JSON_OBJECT, vocab_size=VOCAB, eos=EOS_ID)
        text = decode_randomly(
            processor, tokenizer, vocab_size=VOCAB, eos=EOS_ID, generator=generator, favoured=closing
        )
        reply = json.loads(text)
        assert isinstance(reply, dict)
        kinds.update(type(value) for value in reply.values())
    assert len(kinds) >= 3, kinds  # the draws reached strings, numbers, lists or objects, not only `{}`


def test_replies_over_a_sentencepiece_vocabulary_validate(
    sentencepiece_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tokenizer = sentencepiece_tokenizer
    eos, width = tokenizer.eos_token_id, len(tokenizer)
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        processor = processor_for(tokenizer, json_schema_format(PERSON), vocab_size=width, eos=eos)
        text = decode_randomly(processor, tokenizer, vocab_size=width, eos=eos, generator=generator)
        jsonschema.validate(json.loads(text), PERSON)


def random_tree(
    processor: GrammarProcessor, vocab_size: int, *, nodes: int, seed: int, chain: bool = False
) -> list[tuple[int, ...]]:
    """Continuations of a draft tree of `nodes` positions below the committed output, most of them drafts the
    grammar allows (drawn from the processor's masks), a few it forbids, and the subtrees below those, in random
    order. `chain`: one path of allowed drafts, in order."""
    rng = random.Random(seed)
    tree: list[tuple[int, ...]] = [()]
    while len(tree) < nodes:
        parent = tree[-1] if chain else rng.choice(tree)
        allowed = torch.isfinite(processor.adjust(torch.zeros(1, vocab_size), [parent]))[0].nonzero()
        if not chain and rng.random() < 0.2:
            child = rng.randrange(vocab_size)
        else:
            child = int(allowed[rng.randrange(len(allowed))])
        tree.append((*parent, child))
    if not chain:
        rng.shuffle(tree)
    return tree


def assert_tree_masks_match_committed_masks(
    tokenizer: PreTrainedTokenizerBase,
    response_format: str,
    committed: Sequence[int],
    *,
    vocab_size: int,
    eos: int,
    nodes: int,
    seed: int,
) -> None:
    """Each position's mask in one tree step equals the mask of a processor that committed the same tokens;
    positions the grammar cannot reach keep their logits; the step leaves the committed state as it was."""
    processor = processor_for(tokenizer, response_format, vocab_size=vocab_size, eos=eos)
    processor.commit(committed)
    before = processor.adjust(torch.zeros(1, vocab_size), [()])
    tree = random_tree(processor, vocab_size, nodes=nodes, seed=seed)
    logits = torch.randn(len(tree), vocab_size, generator=torch.Generator().manual_seed(seed))
    adjusted = processor.adjust(logits.clone(), tree)
    reachable = 0
    for position, continuation in enumerate(tree):
        reference = processor_for(tokenizer, response_format, vocab_size=vocab_size, eos=eos)
        try:
            reference.commit([*committed, *continuation])
        except GrammarViolationError:
            assert torch.equal(adjusted[position], logits[position]), continuation
            continue
        expected = reference.adjust(logits[position : position + 1].clone(), [()])[0]
        assert torch.equal(adjusted[position], expected), continuation
        reachable += 1
    assert 0 < reachable < len(tree)
    assert torch.equal(processor.adjust(torch.zeros(1, vocab_size), [()]), before)


@pytest.mark.parametrize(
    "prefix", ["", '{"name": "ab', '{"name": "", "age": 1', '{"name": "", "age": 7, "role": ']
)
def test_tree_masks_equal_masks_after_committing_the_path(
    tokenizer: PreTrainedTokenizerBase, prefix: str
) -> None:
    committed = tokenizer.encode(prefix, add_special_tokens=False)
    assert_tree_masks_match_committed_masks(
        tokenizer,
        json_schema_format(PERSON),
        committed,
        vocab_size=PADDED_VOCAB,
        eos=EOS_ID,
        nodes=64,
        seed=3,
    )


def test_tree_masks_over_a_sentencepiece_vocabulary(sentencepiece_tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer = sentencepiece_tokenizer
    eos, width = tokenizer.eos_token_id, len(tokenizer)
    for length in (0, 3, 9):
        # Its encoder starts text with a space piece, which the grammar refuses: draw the committed tokens.
        drawn = processor_for(tokenizer, JSON_OBJECT, vocab_size=width, eos=eos)
        committed = random_tree(drawn, width, nodes=length + 1, seed=length, chain=True)[-1]
        assert len(committed) == length
        assert_tree_masks_match_committed_masks(
            tokenizer, JSON_OBJECT, committed, vocab_size=width, eos=eos, nodes=64, seed=4
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_logits_of_other_dtypes_get_the_same_masks(
    tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype
) -> None:
    """Logits numpy cannot write in place (not CPU float32, as on an accelerator) are masked by torch."""
    processor = processor_for(tokenizer, json_schema_format(PERSON), vocab_size=PADDED_VOCAB, eos=EOS_ID)
    processor.commit(tokenizer.encode('{"name": "x", "age": ', add_special_tokens=False))
    tree = random_tree(processor, PADDED_VOCAB, nodes=16, seed=7)
    logits = torch.randn(len(tree), PADDED_VOCAB)
    expected = processor.adjust(logits.clone(), tree)
    assert torch.equal(processor.adjust(logits.to(dtype), tree), expected.to(dtype))
    transposed = logits.t().contiguous().t()  # same values, not contiguous
    assert torch.equal(processor.adjust(transposed, tree), expected)


def test_a_complete_reply_allows_only_eos_also_at_drafted_positions(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    processor = processor_for(tokenizer, JSON_OBJECT, vocab_size=PADDED_VOCAB, eos=EOS_ID)
    processor.commit(tokenizer.encode('{"a": 1', add_special_tokens=False))
    close, comma = byte_ids(tokenizer, "},")
    tree = [(), (close,), (close, EOS_ID), (close, EOS_ID, EOS_ID), (comma, EOS_ID), (close, comma)]
    logits = torch.randn(len(tree), PADDED_VOCAB)
    adjusted = processor.adjust(logits.clone(), tree)
    allowed = [torch.isfinite(row).nonzero().view(-1).tolist() for row in adjusted]
    assert EOS_ID not in allowed[0] and close in allowed[0]
    assert allowed[1] == allowed[2] == allowed[3] == [EOS_ID]
    assert torch.equal(adjusted[4], logits[4]) and torch.equal(adjusted[5], logits[5])  # unreachable
    processor.commit([close, EOS_ID, EOS_ID])  # EOS again, as under ignore_eos, leaves the grammar ended
    assert allowed_tokens(processor, PADDED_VOCAB) == [EOS_ID]


def test_committing_a_forbidden_token_fails_the_row(tokenizer: PreTrainedTokenizerBase) -> None:
    processor = processor_for(tokenizer, JSON_OBJECT, vocab_size=VOCAB, eos=EOS_ID)
    with pytest.raises(GrammarViolationError):
        processor.commit(byte_ids(tokenizer, "x"))
    early_end = processor_for(tokenizer, JSON_OBJECT, vocab_size=VOCAB, eos=EOS_ID)
    with pytest.raises(GrammarViolationError):
        early_end.commit([*byte_ids(tokenizer, "{"), EOS_ID])


def test_the_grammar_outranks_min_tokens_where_only_eos_may_follow(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    grammar = processor_for(tokenizer, JSON_OBJECT, vocab_size=VOCAB, eos=EOS_ID)
    processors = [MinTokens(10, [EOS_ID], torch.device("cpu")), grammar]
    for processor in processors:
        processor.commit(byte_ids(tokenizer, "{}"))
    adjusted = adjust_logits(processors, torch.randn(1, VOCAB), [()])
    assert adjusted[0, EOS_ID] == 0.0
    assert torch.isfinite(adjusted[0]).sum() == 1


def test_requests_for_one_schema_share_its_compilation_not_its_state(
    tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiler = GrammarCompiler(tokenizer, vocab_size=VOCAB, eos_token_ids={EOS_ID}, cache_size=1)
    compiled: list[JsonGrammar] = []
    compile_grammar = GrammarCompiler._compile

    def counting(self: GrammarCompiler, grammar: JsonGrammar) -> object:
        compiled.append(grammar)
        return compile_grammar(self, grammar)

    monkeypatch.setattr(GrammarCompiler, "_compile", counting)
    person, any_object = parse_response_format(json_schema_format(PERSON)), parse_response_format(JSON_OBJECT)
    assert person is not None and any_object is not None
    first, second = compiler.processor(person), compiler.processor(person)
    first.commit(tokenizer.encode('{"name": "', add_special_tokens=False))
    assert allowed_tokens(second, VOCAB) == byte_ids(tokenizer, "{")
    assert compiled == [person]
    compiler.processor(any_object)  # the cache holds one grammar: the person schema leaves it
    compiler.processor(person)
    assert compiled == [person, any_object, person]


def test_one_compiler_per_tokenizer_and_vocabulary(tokenizer: PreTrainedTokenizerBase) -> None:
    eos = frozenset({EOS_ID})
    assert compiler_for(tokenizer, vocab_size=VOCAB, eos_token_ids=eos) is compiler_for(
        tokenizer, vocab_size=VOCAB, eos_token_ids=eos
    )
    assert compiler_for(tokenizer, vocab_size=PADDED_VOCAB, eos_token_ids=eos) is not compiler_for(
        tokenizer, vocab_size=VOCAB, eos_token_ids=eos
    )


@pytest.mark.slow
def test_the_default_models_tokenizer() -> None:
    """SmolLM2's 49,152-token byte-level BPE vocabulary: replies validate and tree masks match."""
    source = default_model_source()
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    eos, width = tokenizer.eos_token_id, len(tokenizer)
    generator = torch.Generator().manual_seed(5)
    for _ in range(5):
        processor = processor_for(tokenizer, json_schema_format(PERSON), vocab_size=width, eos=eos)
        text = decode_randomly(processor, tokenizer, vocab_size=width, eos=eos, generator=generator)
        jsonschema.validate(json.loads(text), PERSON)
    assert_tree_masks_match_committed_masks(
        tokenizer,
        json_schema_format(PERSON),
        tokenizer.encode('{"name": "Ada", "age": 3', add_special_tokens=False),
        vocab_size=width,
        eos=eos,
        nodes=64,
        seed=6,
    )


# --- tool calls (the API's tool-call format, api/tool_calls.py) ------------------------------------------------

FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 5},
        "unit": {"$ref": "#/$defs/unit"},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
    "$defs": {"unit": {"enum": ["C", "F"]}},
}
SWITCH = {
    "type": "object",
    "properties": {"on": {"type": "boolean"}, "room": {"enum": ["hall", "den"]}},
    "required": ["on", "room"],
    "additionalProperties": False,
}
FUNCTIONS = {"forecast": FORECAST, "switch": SWITCH, "stop": NO_PARAMETERS}


def tool_format(*, optional: bool, strict: bool = True, functions: dict | None = None) -> str:
    return ToolCalling(functions or FUNCTIONS, optional=optional, strict=strict).wire_format()


def check_call(text: str) -> str:
    """The function a reply calls; its arguments validate against that function's own schema."""
    call = json.loads(text)
    assert list(call) == ["name", "arguments"], text
    jsonschema.validate(call["arguments"], FUNCTIONS[call["name"]])
    return call["name"]


def test_tool_call_formats_parse_to_tool_call_grammars() -> None:
    required = parse_response_format(tool_format(optional=False))
    assert isinstance(required, ToolCallGrammar) and not required.free_text and not required.lenient
    assert json.loads(required.call_schema) == ToolCalling(FUNCTIONS, optional=False).call_schema()
    auto = parse_response_format(tool_format(optional=True, strict=False))
    assert isinstance(auto, ToolCallGrammar) and auto.free_text and auto.lenient


@pytest.mark.parametrize(
    ("response_format", "complaint"),
    [
        (json.dumps({"type": "tool_call"}), "needs a `schema` object"),
        (json.dumps({"type": "tool_call", "tool_call": {"schema": [1]}}), "needs a `schema` object"),
        (tool_format(optional=True, functions={"f": {"type": "shape"}}), "Invalid type: shape"),
        (tool_format(optional=False, functions={"f": {"type": "array", "uniqueItems": True}}), "uniqueItems"),
    ],
)
def test_invalid_tool_formats_are_client_errors_naming_tools(
    tokenizer: PreTrainedTokenizerBase, response_format: str, complaint: str
) -> None:
    with pytest.raises(GorgonError, match=complaint) as caught:
        processor_for(tokenizer, response_format, vocab_size=VOCAB, eos=EOS_ID)
    assert caught.value.param == "tools"
    assert "\n" not in str(caught.value) and "%json" not in str(caught.value)  # not the grammar's text


def test_replies_decoded_under_a_required_tool_call_are_calls_that_validate(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    generator = torch.Generator().manual_seed(7)
    closing = [*byte_ids(tokenizer, '"}'), EOS_ID]
    called = set()
    for _ in range(30):
        processor = processor_for(tokenizer, tool_format(optional=False), vocab_size=VOCAB, eos=EOS_ID)
        text = decode_randomly(
            processor, tokenizer, vocab_size=VOCAB, eos=EOS_ID, generator=generator, favoured=closing
        )
        called.add(check_call(text))
    assert called == set(FUNCTIONS)


def test_replies_decoded_with_tool_choice_auto_are_free_text_or_a_call(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Free text never starts with `{` (the API reads a reply that does as a call), and may end anywhere."""
    generator = torch.Generator().manual_seed(8)
    brace = byte_ids(tokenizer, "{")[0]
    kinds = set()
    for _ in range(40):
        processor = processor_for(tokenizer, tool_format(optional=True), vocab_size=VOCAB, eos=EOS_ID)
        emitted: list[int] = []
        while not emitted or emitted[-1] != EOS_ID:
            logits = torch.randn(1, VOCAB, generator=generator)
            logits[0, [brace, EOS_ID, *byte_ids(tokenizer, '"}')]] += 3.0
            adjusted = processor.adjust(logits, [()])
            token = int(torch.multinomial(torch.softmax(adjusted[0], dim=-1), 1, generator=generator))
            processor.commit([token])
            emitted.append(token)
            assert len(emitted) < 600
        text = tokenizer.decode(emitted[:-1])
        assert text, "an empty reply is neither text nor a call"
        kinds.add(check_call(text) if text.startswith("{") else "text")
    assert "text" in kinds and len(kinds) > 1


@pytest.mark.parametrize(
    ("optional", "prefix"),
    [(True, ""), (True, '{"name": "forecast", "arguments": {"city": "a'), (False, '{"name": "s')],
)
def test_tree_masks_under_a_tool_grammar_equal_masks_after_committing_the_path(
    tokenizer: PreTrainedTokenizerBase, optional: bool, prefix: str
) -> None:
    assert_tree_masks_match_committed_masks(
        tokenizer,
        tool_format(optional=optional),
        tokenizer.encode(prefix, add_special_tokens=False),
        vocab_size=VOCAB,
        eos=EOS_ID,
        nodes=48,
        seed=len(prefix),
    )


TOOL_PROMPTS = {"required": (3, 1, 4, 1, 5), "auto": (9, 8, 7, 6, 5, 4), "free": (15, 173, 63)}


def tool_rows() -> dict[str, SamplingParams]:
    return {
        "required": SamplingParams(max_new_tokens=120, response_format=tool_format(optional=False)),
        "auto": SamplingParams(max_new_tokens=40, response_format=tool_format(optional=True)),
        "free": SamplingParams(max_new_tokens=30),
    }


def run_rows(engine, params: dict[str, SamplingParams]) -> dict[str, list[TokenEvent]]:
    for name, row in params.items():
        engine.add(GenerationRequest(name, TOOL_PROMPTS[name], row))
    events: dict[str, list[TokenEvent]] = {}
    while engine.num_active:
        for event in engine.step():
            events.setdefault(event.request_id, []).append(event)
    return events


@pytest.mark.parametrize("recurrent", [False, True])
def test_the_engine_speculating_writes_the_plain_tool_calls(make_engine, recurrent: bool) -> None:
    """Greedy replies under tool-call grammars, beside a free row: every shape in turn (CyclingSelector) gives
    the plain engine's tokens, the required row's reply is a call that validates, the auto row's is a call or
    text not starting with `{`."""
    plain = run_rows(make_engine(), tool_rows())
    heads = random_heads(3, recurrent=recurrent)
    speculative = run_rows(make_engine(heads, cycle_shapes=True, medusa_choices="cpu_12"), tool_rows())
    tokens = {
        name: [token for event in events for token in event.token_ids] for name, events in plain.items()
    }
    assert tokens == {
        name: [token for event in events for token in event.token_ids] for name, events in speculative.items()
    }
    texts = {name: "".join(event.text for event in events) for name, events in plain.items()}
    assert plain["required"][-1].finish_reason is FinishReason.STOP
    check_call(texts["required"])
    assert texts["auto"] and (not texts["auto"].startswith("{") or check_call(texts["auto"]))
