"""Incremental detokenisation (multi-byte UTF-8) and stop-sequence hold-back, in time linear in the text."""

from __future__ import annotations

import time

from gorgon.core.limits import MAX_STOP_SEQUENCE_CHARS
from gorgon.engine.detok import MAX_UNDECIDED_TOKENS, IncrementalDetokenizer, StopSequenceFilter


def test_deltas_never_split_a_character(tokenizer) -> None:
    text = "héllo wörld 日本語 ✓ done"
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add([token]) for token in tokenizer.encode(text)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in delta for delta in deltas)
    # the three bytes of 日 arrive as three tokens: the character appears once, whole
    assert "日" in deltas


def test_stop_sequence_prefix_is_held_back_then_released() -> None:
    stop_filter = StopSequenceFilter(["###"])
    assert stop_filter.push("abc #") == ("abc ", False)
    assert stop_filter.push("#x") == ("##x", False)
    assert stop_filter.push(" ##") == (" ", False)
    assert stop_filter.flush() == "##"


def test_stop_sequence_cuts_the_text() -> None:
    stop_filter = StopSequenceFilter(["END", "\n\n"])
    assert stop_filter.push("one two EN") == ("one two ", False)
    assert stop_filter.push("D three") == ("", True)


def test_earliest_stop_sequence_wins() -> None:
    stop_filter = StopSequenceFilter(["b", "a"])
    assert stop_filter.push("xxab") == ("xx", True)


def test_stop_sequence_split_across_pushes_and_overlapping_itself() -> None:
    stop_filter = StopSequenceFilter(["aab"])
    assert stop_filter.push("xa") == ("x", False)
    assert stop_filter.push("a") == ("", False)
    assert stop_filter.push("a") == ("a", False), "the third a shifts the candidate by one"
    assert stop_filter.push("bz") == ("", True)


def test_of_two_stops_completing_at_the_same_character_the_longer_cuts() -> None:
    stop_filter = StopSequenceFilter(["bc", "abc"])
    assert stop_filter.push("xxabcd") == ("xx", True)


def test_the_first_stop_to_complete_ends_the_text() -> None:
    stop_filter = StopSequenceFilter(["abcd", "bc"])
    assert stop_filter.push("zabcd") == ("za", True)


def test_checking_long_stop_sequences_costs_time_linear_in_the_text() -> None:
    """Four stops of the longest admitted length, built to keep long partial matches alive, over 20 000
    characters pushed one at a time: each character is read once per stop."""
    stops = ["a" * (MAX_STOP_SEQUENCE_CHARS - 1) + tail for tail in "bcde"]
    stop_filter = StopSequenceFilter(stops)
    started = time.perf_counter()
    released = "".join(stop_filter.push("a")[0] for _ in range(20_000))
    elapsed = time.perf_counter() - started
    assert len(released) + len(stop_filter.pending) == 20_000
    assert len(stop_filter.pending) == MAX_STOP_SEQUENCE_CHARS - 1
    assert elapsed < 2.0, f"{elapsed:.2f} s for 20 000 characters"


def test_undecodable_tokens_are_released_after_a_few_steps(tokenizer) -> None:
    """Bytes that never complete a character (lone continuation bytes) come out as U+FFFD instead of being held
    back for ever, which would make every later decode longer."""
    continuation_byte = tokenizer.convert_tokens_to_ids(
        tokenizer.convert_ids_to_tokens(tokenizer.encode("é"))[1]
    )
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add([continuation_byte]) for _ in range(40)]
    released = "".join(deltas)
    assert set(released) == {"\ufffd"} and len(released) >= 40 - MAX_UNDECIDED_TOKENS
    assert len(detokenizer.token_ids) - detokenizer.prefix_offset <= 2 * (MAX_UNDECIDED_TOKENS + 1)


def test_the_end_releases_what_was_held_back(tokenizer) -> None:
    """Complete text and an incomplete character arriving in one step are held back together; the end of
    generation releases both (the incomplete bytes as U+FFFD)."""
    partial = tokenizer.encode("日")[:2]  # its first two bytes only
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.add(tokenizer.encode("ok ")) == "ok "
    assert detokenizer.add(partial) == ""
    assert set(detokenizer.flush()) == {"\ufffd"}
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.add([*tokenizer.encode(" more"), *partial]) == ""
    released = detokenizer.flush()
    assert released.startswith(" more") and set(released[len(" more") :]) == {"\ufffd"}
