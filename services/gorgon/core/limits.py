"""Request limits the API checks on arrival and every engine checks again at `add` (a worker may be reached by an
older or other API): one definition, torch-free."""

from __future__ import annotations

MAX_STOP_SEQUENCES = 4
MAX_STOP_SEQUENCE_CHARS = 1000
"""A stop sequence is held back while it may be starting: longer ones would hold back most of a reply."""

GREEDY_BELOW_TEMPERATURE = 1e-5
"""Temperatures below this (0 included) decode greedily, as in vLLM: dividing logits by a temperature near the
smallest float overflows to inf and the softmax to NaN."""

MAX_LOGPROBS = 20
"""Most top alternatives per token (chat `top_logprobs`; completions `logprobs` stop at MAX_COMPLETION_LOGPROBS),
as OpenAI allows."""
MAX_COMPLETION_LOGPROBS = 5

PENALTY_RANGE = (-2.0, 2.0)
"""presence_penalty and frequency_penalty, as OpenAI bounds them."""
LOGIT_BIAS_RANGE = (-100.0, 100.0)
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_STOP_TOKEN_IDS = 32
