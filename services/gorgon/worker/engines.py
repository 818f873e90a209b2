"""Which engine a worker runs. `echo` only when asked for by name; `medusa` is the real model."""

from __future__ import annotations

import logging

from gorgon.core.errors import ConfigurationError
from gorgon.engine.interface import Engine
from gorgon.worker.config import WorkerSettings

log = logging.getLogger(__name__)


def build_engine(settings: WorkerSettings) -> Engine:
    if settings.engine == "echo":
        from gorgon.engine.echo import EchoEngine  # noqa: PLC0415 - keeps the CLI's imports light

        log.info(
            "echo engine: deterministic tokens, no model (step delay %.3f s)", settings.echo_step_delay_s
        )
        return EchoEngine(step_delay_s=settings.echo_step_delay_s)
    return _load_medusa_engine()


def _load_medusa_engine() -> Engine:
    try:
        from gorgon.engine import load_engine  # noqa: PLC0415 - imports torch
        from gorgon.engine.config import EngineSettings  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigurationError(
            f"the medusa engine cannot be loaded ({exc}); run with --engine echo for the model-free engine"
        ) from exc
    return load_engine(EngineSettings())
