"""gorgon's load generator: drives the OpenAI-compatible endpoints over SSE (closed or open loop), measures
time to first token, inter-token latency and end-to-end latency per request, and writes summary.json, a CSV of
every request and PNG plots. Entry point: `gorgon loadtest` (gorgon_loadtest.cli)."""
