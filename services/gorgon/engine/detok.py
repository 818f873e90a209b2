"""Text deltas from token ids: incremental detokenisation and stop sequences."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHARACTER = "\ufffd"


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
        if full_text.endswith(REPLACEMENT_CHARACTER) or len(full_text) <= len(prefix_text):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return full_text[len(prefix_text) :]


class StopSequenceFilter:
    """Holds back text that could be the start of a stop sequence; reports when one is complete."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(sequence for sequence in stop if sequence)
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to send, whether a stop sequence was reached)."""
        self.pending += text
        if not self.stop:
            released, self.pending = self.pending, ""
            return released, False
        hits = [self.pending.find(sequence) for sequence in self.stop]
        found = [index for index in hits if index >= 0]
        if found:
            released = self.pending[: min(found)]
            self.pending = ""
            return released, True
        keep = self._longest_stop_prefix_suffix()
        released = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return released, False

    def flush(self) -> str:
        """The held-back text, at the end of generation (no stop sequence completed)."""
        released, self.pending = self.pending, ""
        return released

    def _longest_stop_prefix_suffix(self) -> int:
        longest = 0
        for sequence in self.stop:
            for length in range(min(len(sequence) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(sequence[:length]):
                    longest = length
                    break
        return longest
