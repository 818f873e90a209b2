"""The inference engine. `load_engine()` builds the Medusa engine from EngineSettings.

Imports here stay light (the API image has no torch): the heavy modules load inside `load_engine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gorgon.engine.config import EngineSettings
    from gorgon.engine.medusa_engine import MedusaEngine


def load_engine(settings: EngineSettings | None = None) -> MedusaEngine:
    """Load the model (and the Medusa heads configured for it, engine/drafting/source.py) and return a ready engine."""
    from gorgon.engine.config import EngineSettings  # noqa: PLC0415 - keeps `import gorgon.engine` torch-free
    from gorgon.engine.drafting.checkpoint import load_heads_for  # noqa: PLC0415
    from gorgon.engine.loader import load_model_and_tokenizer  # noqa: PLC0415
    from gorgon.engine.medusa_engine import MedusaEngine  # noqa: PLC0415

    settings = settings or EngineSettings()
    loaded = load_model_and_tokenizer(settings)
    heads = load_heads_for(loaded, settings)
    return MedusaEngine(loaded, heads, settings)
