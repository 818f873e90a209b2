"""How a failed poll is retried. The kopf handlers map these to kopf.TemporaryError / PermanentError."""

from __future__ import annotations


class PoolError(Exception):
    """A poll of a WorkerPool failed; the message says what and what to do."""


class TransientError(PoolError):
    """A condition that clears by itself or by a change outside the spec (API hiccup, Redis down, missing
    Deployment or Secret, RBAC not applied yet): poll again after `delay_s`."""

    def __init__(self, message: str, *, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class InvalidSpecError(PoolError, ValueError):
    """The WorkerPool spec cannot work as written: nothing helps but editing the spec."""
