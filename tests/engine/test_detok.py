"""Incremental detokenisation (multi-byte UTF-8) and stop-sequence hold-back."""

from __future__ import annotations

from gorgon.engine.detok import IncrementalDetokenizer, StopSequenceFilter


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
