"""Structured output: a request's `response_format` compiled to a JSON grammar (llguidance), and a logits
processor that masks every position of a step, drafted tree nodes included, to the tokens the grammar allows.

llguidance builds token masks lazily from the grammar and a byte trie of the vocabulary, so a new schema compiles
in about a millisecond. It refuses schema keywords it cannot enforce instead of ignoring them (xgrammar compiles
`allOf`, `not` and `uniqueItems` but lets replies break them), so an accepted `strict` schema always holds for a
complete reply. docs/benchmarks.md has the measurements behind the choice of engine.

`response_format` (OpenAI's):
- `{"type": "text"}` or absent: free text, no processor.
- `{"type": "json_object"}`: any JSON object.
- `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": bool}}`: the schema (any JSON
  object without one). With `strict: true` a keyword the grammar cannot enforce is a 400; without, such keywords
  are ignored (OpenAI's non-strict mode promises the schema on a best-effort basis) and every other one holds.

A chat's tool calls come in the same field, in a format only the API sends (api/tool_calls.py builds it):
- `{"type": "tool_call", "tool_call": {"schema": {...}, "free_text": bool, "strict": bool}}`: the reply is one
  tool call, a JSON object that `schema` (an anyOf of `{"name": <const>, "arguments": <parameters>}`) validates;
  with `free_text`, it may instead be text that does not start with `{` (tool_choice `auto`). A Lark grammar
  with the schema embedded (`%json`) expresses the choice; `strict` as for json_schema.

The JSON is laid out as `json.dumps` does (`", "` and `": "`, no other whitespace): a small model offered free
whitespace can spend its whole budget on newlines, and a reply cut by max_tokens does not parse.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import llguidance
import llguidance.hf
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from gorgon.core.errors import GorgonError
from gorgon.core.protocol import TOOL_CALL_FORMAT
from gorgon.engine.interface import SamplingParams
from gorgon.engine.logits_processing import LogitsProcessor

log = logging.getLogger(__name__)

PARAM = "response_format"
TOOLS_PARAM = "tools"
GRAMMAR_CACHE_SIZE = 64
"""Compiled grammars kept per tokenizer (least recently used out). A request copies its cached matcher in about a
microsecond instead of compiling it again (about a millisecond) and rebuilding the lexer states that earlier
requests built lazily; 64 covers the distinct schemas a deployment's clients send in turn."""
TOKENIZERS_KEPT = 4
"""Token tables kept (one per tokenizer, vocabulary width and EOS set; building one takes about a second)."""
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
ALL_ALLOWED = -1
"""A mask word with every bit set: at a position the grammar cannot reach every token is left as it is."""
FREE_TEXT_TERMINAL = "TEXT: /[^{](?s:.)*/"
"""Free text beside a tool call: anything not starting with `{`, so that the first character tells the two apart."""
GRAMMAR_POSITION = re.compile(r"^at \d+\(\d+\): ")
"""The `line(column):` prefix of a Lark compile error (the rest of its first line says what is wrong)."""


class GrammarViolationError(RuntimeError):
    """The row committed a token its grammar forbids, or the grammar engine failed: the row cannot go on."""


@dataclass(frozen=True, slots=True)
class JsonGrammar:
    """What a response_format asks for: a JSON schema (as JSON text, properties in the client's order, which is
    the order the reply writes them in) and whether keywords the engine cannot enforce are ignored."""

    schema: str
    lenient: bool
    param: ClassVar[str] = PARAM
    subject: ClassVar[str] = "the JSON schema"

    def compiled(self) -> str:
        overrides: Any = {**JSON_LAYOUT, "lenient": self.lenient}
        return llguidance.LLMatcher.grammar_from_json_schema(self.schema, overrides=overrides)


@dataclass(frozen=True, slots=True)
class ToolCallGrammar:
    """A reply that is one tool call, a JSON object `call_schema` (JSON text) validates, or with `free_text` also
    text that does not start with `{`; `lenient` as for JsonGrammar."""

    call_schema: str
    lenient: bool
    free_text: bool
    param: ClassVar[str] = TOOLS_PARAM
    subject: ClassVar[str] = "the tools' parameters"

    def compiled(self) -> str:
        """A Lark grammar with the call's schema embedded; the JSON layout travels in the schema's `x-guidance`
        options, where llguidance's JSON compiler reads them."""
        schema = {**json.loads(self.call_schema), "x-guidance": {**JSON_LAYOUT, "lenient": self.lenient}}
        start = "start: TEXT | call\n" + FREE_TEXT_TERMINAL if self.free_text else "start: call"
        return llguidance.LLMatcher.grammar_from_lark(f"{start}\ncall: %json {json.dumps(schema)}\n")


Grammar = JsonGrammar | ToolCallGrammar


def parse_response_format(response_format: str | None) -> Grammar | None:
    """The grammar a request's response_format (JSON text) asks for; None for free text. GorgonError (400) when
    it is malformed."""
    if response_format is None:
        return None
    try:
        spec = json.loads(response_format)
    except json.JSONDecodeError as exc:
        raise GorgonError(f"response_format is not valid JSON: {exc}", param=PARAM) from exc
    if not isinstance(spec, dict):
        raise GorgonError("response_format must be an object with a `type`", param=PARAM)
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonGrammar(json.dumps(ANY_JSON_OBJECT), lenient=False)
    if kind == "json_schema":
        return _json_schema_grammar(spec.get("json_schema"))
    if kind == TOOL_CALL_FORMAT:
        return _tool_call_grammar(spec.get(TOOL_CALL_FORMAT))
    raise GorgonError(
        f"response_format type must be one of text, json_object, json_schema, not {kind!r}", param=PARAM
    )


def _json_schema_grammar(spec: object) -> JsonGrammar:
    if not isinstance(spec, dict):
        raise GorgonError("response_format.json_schema must be an object", param=PARAM)
    schema = spec.get("schema", ANY_JSON_OBJECT)
    if not isinstance(schema, dict):
        raise GorgonError("response_format.json_schema.schema must be a JSON schema object", param=PARAM)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise GorgonError("response_format.json_schema.strict must be a boolean", param=PARAM)
    return JsonGrammar(json.dumps(schema, separators=(",", ":")), lenient=not strict)


def _tool_call_grammar(spec: object) -> ToolCallGrammar:
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise GorgonError("the tool-call format needs a `schema` object", param=TOOLS_PARAM)
    return ToolCallGrammar(
        json.dumps(spec["schema"], separators=(",", ":")),
        lenient=not spec.get("strict", False),
        free_text=bool(spec.get("free_text", False)),
    )


class GrammarCompiler:
    """Grammars over one tokenizer: its token table for llguidance, and the last GRAMMAR_CACHE_SIZE compiled
    grammars as fresh matchers that each request copies."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        vocab_size: int,
        eos_token_ids: Collection[int],
        cache_size: int = GRAMMAR_CACHE_SIZE,
    ) -> None:
        """`vocab_size`: the width of the model's logits, which may exceed the tokenizer's (padded lm_head rows,
        never allowed) or fall short of it (tokens the model cannot produce)."""
        self.vocab_size = vocab_size
        self.tokenizer = _token_table(tokenizer, max(vocab_size, len(tokenizer)), eos_token_ids)
        self.cache_size = cache_size
        self._matchers: OrderedDict[Grammar, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def processor(self, grammar: Grammar) -> GrammarProcessor:
        return GrammarProcessor(
            self.matcher(grammar),
            table_size=self.tokenizer.vocab_size,
            eos_token_ids=self.tokenizer.eos_tokens,
        )

    def matcher(self, grammar: Grammar) -> llguidance.LLMatcher:
        """A matcher at the start of the reply, of its own (a copy of the cached one)."""
        with self._lock:
            pristine = self._matchers.get(grammar)
            if pristine is not None:
                self._matchers.move_to_end(grammar)
                return pristine.deep_copy()
        pristine = self._compile(grammar)
        with self._lock:
            self._matchers[grammar] = pristine
            while len(self._matchers) > self.cache_size:
                self._matchers.popitem(last=False)
        return pristine.deep_copy()

    def _compile(self, grammar: Grammar) -> llguidance.LLMatcher:
        started = time.perf_counter()
        compiled = grammar.compiled()
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled, self.tokenizer)
        if failed:
            raise _unusable(grammar, messages[0])
        if messages:
            log.debug("%s schema compiled with warnings: %s", grammar.param, "; ".join(messages))
        matcher = llguidance.LLMatcher(self.tokenizer, compiled, log_level=0)
        if matcher.is_error():
            raise _unusable(grammar, matcher.get_error())
        log.debug("%s grammar compiled in %.1f ms", grammar.param, (time.perf_counter() - started) * 1e3)
        return matcher


def _unusable(grammar: Grammar, message: str) -> GorgonError:
    """The 400 for a schema the grammar engine refuses: the first line of its message (a Lark grammar's error
    goes on with the grammar's text), without its position in the grammar."""
    first_line = next(iter(message.strip().splitlines()), "")
    reason = GRAMMAR_POSITION.sub("", first_line)
    return GorgonError(f"{grammar.param}: {grammar.subject} cannot be used: {reason}", param=grammar.param)


def _token_table(
    tokenizer: PreTrainedTokenizerBase, width: int, eos_token_ids: Collection[int]
) -> llguidance.LLTokenizer:
    started = time.perf_counter()
    try:
        table = llguidance.hf.from_tokenizer(
            tokenizer,  # type: ignore[arg-type]  # checked inside: a fast tokenizer or ValueError
            n_vocab=width,
            eos_token=sorted(eos_token_ids) or None,
        )
    except ValueError as exc:
        raise GorgonError(
            f"response_format needs a fast (tokenizers) tokenizer, which this model lacks: {exc}", param=PARAM
        ) from exc
    log.info(
        "structured output: token table of %d tokens built in %.0f ms",
        width,
        1e3 * (time.perf_counter() - started),
    )
    return table


@lru_cache(maxsize=TOKENIZERS_KEPT)
def compiler_for(
    tokenizer: PreTrainedTokenizerBase, *, vocab_size: int, eos_token_ids: frozenset[int]
) -> GrammarCompiler:
    """The compiler of one model's tokenizer (built once: about a second for a 49k vocabulary). An engine may call
    it at load so that the first structured request does not wait for it."""
    return GrammarCompiler(tokenizer, vocab_size=vocab_size, eos_token_ids=eos_token_ids)


def grammar_processors(
    params: SamplingParams,
    tokenizer: PreTrainedTokenizerBase,
    *,
    eos_token_ids: Collection[int],
    vocab_size: int,
) -> list[LogitsProcessor]:
    """The processor params.response_format asks for (run it after the sampling processors: the grammar has the
    last word); empty for free text. GorgonError (400, param response_format, or tools for a tool-call format)
    for a malformed or unusable one."""
    grammar = parse_response_format(params.response_format)
    if grammar is None:
        return []
    compiler = compiler_for(tokenizer, vocab_size=vocab_size, eos_token_ids=frozenset(eos_token_ids))
    return [compiler.processor(grammar)]


class GrammarProcessor:
    """One row's grammar: at each position the tokens the grammar allows after the committed output plus the
    position's continuation keep their logits, every other token gets -inf; EOS is allowed only where the reply
    may end, and is then the only token once the JSON is complete.

    A tree's positions are visited in the order of their continuations, so that the matcher moves along the
    tree depth first: one token consumed per node and rolled back once per branch, not once per position. A
    position whose continuation the grammar rejects cannot be reached (its own token is masked at its parent):
    its logits are left as they are, since masking all of them would only put NaN in the row's probabilities.
    """

    def __init__(
        self, matcher: llguidance.LLMatcher, *, table_size: int, eos_token_ids: Collection[int]
    ) -> None:
        """`table_size`: the tokens the matcher's token table holds (at least the logits' width)."""
        self.matcher = matcher
        self.eos_token_ids = frozenset(eos_token_ids)
        self.mask_words = (table_size + 31) // 32
        self.end_only = np.zeros(self.mask_words, dtype=np.uint32)
        for token in self.eos_token_ids:
            self.end_only[token // 32] |= np.uint32(1 << (token % 32))

    def adjust(self, logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        """logits [N, V] -> the same tensor with the tokens the grammar forbids at -inf."""
        forbidden = _forbidden(self._position_masks(continuations), logits.shape[-1])
        _set_forbidden(logits, forbidden)
        _keep_a_choice(logits, forbidden)
        return logits

    def commit(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            if token in self.eos_token_ids and self.matcher.is_stopped():
                continue  # the reply has ended: EOS again (ignore_eos) changes nothing, and llguidance refuses it
            if not self.matcher.consume_token(token):
                raise GrammarViolationError(f"the reply left its response_format grammar: {self._error()}")

    def _position_masks(self, continuations: Sequence[Sequence[int]]) -> np.ndarray:
        """[N, words] uint32: bit t of a row set where token t is allowed at that position."""
        masks = np.full((len(continuations), self.mask_words), ALL_ALLOWED, dtype=np.int32).view(np.uint32)
        path: list[int] = []
        for position in sorted(range(len(continuations)), key=lambda index: tuple(continuations[index])):
            self._fill_position(masks[position], continuations[position], path)
        self.matcher.rollback(len(path))
        if self.matcher.is_error():
            raise GrammarViolationError(f"the grammar engine failed: {self._error()}")
        return masks

    def _fill_position(self, mask: np.ndarray, continuation: Sequence[int], path: list[int]) -> None:
        """`path`: the tokens the matcher holds beyond the committed output, moved to this continuation."""
        ending = next((at for at, token in enumerate(continuation) if token in self.eos_token_ids), None)
        text_tokens = continuation if ending is None else continuation[:ending]
        if not self._move(path, text_tokens):
            return
        if ending is None:
            self.matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        elif self.matcher.is_accepting() and all(
            token in self.eos_token_ids for token in continuation[ending:]
        ):
            mask[:] = self.end_only

    def _move(self, path: list[int], target: Sequence[int]) -> bool:
        """Rolls the matcher back to the common prefix of `path` and `target`, then consumes the rest of target;
        False where the grammar rejects one of its tokens (the matcher then holds target's longest valid
        prefix). try_consume_tokens never puts the matcher in its error state, which rollback cannot leave."""
        common = 0
        for held, wanted in zip(path, target, strict=False):
            if held != wanted:
                break
            common += 1
        if common < len(path):
            self.matcher.rollback(len(path) - common)
            del path[common:]
        rest = list(target[common:])
        if not rest:
            return True
        consumed = self.matcher.try_consume_tokens(rest)
        path.extend(rest[:consumed])
        return consumed == len(rest)

    def _error(self) -> str:
        return self.matcher.get_error()[:300]


def _forbidden(masks: np.ndarray, width: int) -> np.ndarray:
    """[N, words] masks of allowed tokens -> [N, width] bool, True where forbidden (numpy's unpackbits is
    branch-free: torch's shifts cost several times more at a tree's width)."""
    bits = np.unpackbits(np.invert(masks).view(np.uint8), axis=1, bitorder="little")[:, :width]
    return np.ascontiguousarray(bits).view(np.bool_)


def _set_forbidden(logits: torch.Tensor, forbidden: np.ndarray) -> None:
    """-inf into logits [N, V] where `forbidden`. In a CPU float32 tensor numpy writes it in place, about three
    times faster than masked_fill_ on a tree's masks; elsewhere the mask goes to the logits' device."""
    numpy_writes = logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous()
    if numpy_writes and not logits.requires_grad:
        np.copyto(logits.numpy(), np.float32(-np.inf), where=forbidden)
    else:
        logits.masked_fill_(torch.from_numpy(forbidden).to(logits.device), float("-inf"))


def _keep_a_choice(logits: torch.Tensor, forbidden: np.ndarray) -> None:
    """Where earlier processors left no allowed token finite (min_tokens forbids EOS where the JSON is complete),
    the grammar wins: its tokens get equal logits, so the reply still parses."""
    stuck = torch.isneginf(logits.amax(dim=-1)).cpu().numpy()
    if stuck.any():
        closed = torch.from_numpy(forbidden[stuck]).to(logits.device)
        logits[torch.from_numpy(stuck).to(logits.device)] = torch.where(closed, float("-inf"), 0.0)
