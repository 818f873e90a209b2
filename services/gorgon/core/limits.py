"""Request limits the API checks on arrival and every engine checks again at `add` (a worker may be reached by an
older or other API): one definition, torch-free."""

from __future__ import annotations

MAX_STOP_SEQUENCES = 4
MAX_STOP_SEQUENCE_CHARS = 1000
"""A stop sequence is held back while it may be starting: longer ones would hold back most of a reply."""

GREEDY_BELOW_TEMPERATURE = 1e-5
"""Temperatures below this (0 included) decode greedily, as in vLLM: dividing logits by a temperature near the
smallest float overflows to inf and the softmax to NaN."""
