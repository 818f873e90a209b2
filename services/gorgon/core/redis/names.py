"""Every Redis name gorgon uses.

Layout (namespace `gorgon` by default):

    {ns}:requests:{model}          stream of request entries, consumer group `workers`
    {ns}:dead:{model}              dead-letter stream: entries delivered too often
    {ns}:replies:{listener}        pub/sub channel of one API process: seq-numbered chunks of its requests, one
                                   JSON array per worker step
    {ns}:result:{request_id}       final result, short TTL (recovery for missed finals and non-streaming waiters)
    {ns}:progress:{request_id}     list of the chunks published so far (a redelivered request resumes from it)
    {ns}:attempt:{request_id}      fencing token: the attempt allowed to publish (absent = first attempt)
    {ns}:cancel:{request_id}       cancel flag set by the API when the client goes away
    {ns}:held:{request_id}         set while a worker holds the request, refreshed by its steps (tells a request
                                   a worker is generating apart from one Redis lost with its stream entry)
    {ns}:workers:{model}:{worker}  worker registration (model info) kept alive by a heartbeat TTL
    {ns}:worker-index              set of the registration keys (finding the live workers never scans the keyspace)
    {ns}:ratelimit:{key}:{window}  per-API-key request counter of one rate-limit window
"""

from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class RedisNames:
    """Redis key, stream and channel names under one namespace."""

    namespace: str = "gorgon"

    def request_stream(self, model: str) -> str:
        return f"{self.namespace}:requests:{model}"

    def dead_letter_stream(self, model: str) -> str:
        return f"{self.namespace}:dead:{model}"

    def reply_channel(self, listener_id: str) -> str:
        return f"{self.namespace}:replies:{listener_id}"

    def result_key(self, request_id: str) -> str:
        return f"{self.namespace}:result:{request_id}"

    def progress_key(self, request_id: str) -> str:
        return f"{self.namespace}:progress:{request_id}"

    def attempt_key(self, request_id: str) -> str:
        return f"{self.namespace}:attempt:{request_id}"

    def cancel_key(self, request_id: str) -> str:
        return f"{self.namespace}:cancel:{request_id}"

    def held_key(self, request_id: str) -> str:
        return f"{self.namespace}:held:{request_id}"

    def worker_key(self, model: str, worker_id: str) -> str:
        return f"{self.namespace}:workers:{model}:{worker_id}"

    def worker_pattern(self, model: str | None = None) -> str:
        return f"{self.namespace}:workers:{model or '*'}:*"

    def worker_prefix(self, model: str | None = None) -> str:
        """What the registration keys of `model`'s workers (or of all workers) begin with."""
        return f"{self.namespace}:workers:{model}:" if model else f"{self.namespace}:workers:"

    def worker_index(self) -> str:
        return f"{self.namespace}:worker-index"

    def rate_limit_key(self, key_id: str, window: int) -> str:
        return f"{self.namespace}:ratelimit:{key_id}:{window}"


def as_text(value: bytes | str) -> str:
    """A name or entry id as Redis returned it: bytes, unless the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value
