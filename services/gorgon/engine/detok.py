"""Text deltas from token ids: incremental detokenisation and stop sequences.

Both cost time linear in the text they are given: the detokeniser decodes a window of a few tokens, and the stop
filter reads each character once per stop sequence (a prefix automaton per sequence), whatever the sequences'
lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the echo engine uses the stop filter without loading transformers
    from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHARACTER = "\ufffd"
MAX_UNDECIDED_TOKENS = 8
"""Tokens the detokeniser may hold back while their text ends in U+FFFD or adds nothing (a UTF-8 character has at
most 4 bytes): past that they are invalid bytes or text-free tokens, and their text is released as it decodes, so
the decoded window stays short."""


class IncrementalDetokenizer:
    """Decodes a growing list of token ids into text deltas, never splitting a multi-byte UTF-8 character.

    Decodes a short window of recent tokens (so word-boundary spaces come out right) and holds text back while it
    ends in U+FFFD, i.e. while a character's bytes are still incomplete.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not isinstance(text, str):  # a flat list of ids decodes to one string
            raise TypeError(f"the tokenizer decoded {len(ids)} ids to {type(text).__name__}")
        return text

    def add(self, token_ids: Sequence[int]) -> str:
        """Append tokens; return the newly complete text."""
        self.token_ids.extend(token_ids)
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        undecided = full_text.endswith(REPLACEMENT_CHARACTER) or len(full_text) <= len(prefix_text)
        if undecided and len(self.token_ids) - self.read_offset <= MAX_UNDECIDED_TOKENS:
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """At the end of generation: the text still held back, as the tokenizer decodes it (an incomplete
        character as U+FFFD), so that nothing generated is lost."""
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.token_ids)
        return full_text[len(prefix_text) :]


class StopSequenceFilter:
    """Holds back text that could be the start of a stop sequence; reports when one is complete.

    The first stop sequence to complete ends the text (of two completing at the same character, the longer one).
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(sequence for sequence in stop if sequence)
        self._matchers = [PrefixMatcher(sequence) for sequence in self.stop]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to send, whether a stop sequence was reached)."""
        start = len(self.pending)
        self.pending += text
        if not self._matchers:
            released, self.pending = self.pending, ""
            return released, False
        for position, character in enumerate(text, start=start + 1):
            completed = [len(matcher.stop) for matcher in self._matchers if matcher.feed(character)]
            if completed:
                released = self.pending[: position - max(completed)]
                self.pending = ""
                return released, True
        keep = max(matcher.matched for matcher in self._matchers)
        released = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return released, False

    def flush(self) -> str:
        """The held-back text, at the end of generation (no stop sequence completed)."""
        released, self.pending = self.pending, ""
        return released


class PrefixMatcher:
    """Knuth-Morris-Pratt over a stream of characters: `matched` is the length of the longest prefix of `stop`
    that ends the text fed so far, kept in amortised constant time per character."""

    def __init__(self, stop: str) -> None:
        self.stop = stop
        self.fallback = _prefix_function(stop)
        self.matched = 0

    def feed(self, character: str) -> bool:
        """Read one character; True when the whole stop sequence has just been read."""
        matched = self.matched
        while matched and self.stop[matched] != character:
            matched = self.fallback[matched - 1]
        if self.stop[matched] == character:
            matched += 1
        if matched == len(self.stop):
            self.matched = self.fallback[matched - 1]
            return True
        self.matched = matched
        return False


def _prefix_function(text: str) -> list[int]:
    """fallback[i]: the length of the longest proper prefix of text[: i + 1] that is also its suffix."""
    fallback = [0] * len(text)
    matched = 0
    for index in range(1, len(text)):
        while matched and text[index] != text[matched]:
            matched = fallback[matched - 1]
        if text[index] == text[matched]:
            matched += 1
        fallback[index] = matched
    return fallback
