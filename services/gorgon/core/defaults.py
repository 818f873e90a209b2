"""What a worker with default settings serves, which processes other than the worker must agree on: the operator
counts a model's backlog under the name its workers serve, and aims at as much backlog per worker as one decodes
at once. The engine's settings (engine/config.py) take their defaults from here."""

from __future__ import annotations

DEFAULT_MODEL_DISPLAY_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MAX_BATCH_SIZE = 16  # rows the engine decodes together at most
