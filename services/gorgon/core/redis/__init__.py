"""The Redis protocol between the API processes, the workers and the operator: one module per concern.

`names` (every key, stream and channel), `connection` (clients and the transport takeover), `command_connection`
(the hot path's pipelined connection), `scripts` (the Lua scripts under `lua/`), `queue` (the request streams and
their consumer group), `fencing` (attempts), `publisher` (the worker's writes), `subscriber` (the API's reply
channel), `requests` (cancel flags, stored results and progress), `registry` (live workers), `rate_limit`.

Delivery is at-least-once (consumer group + XAUTOCLAIM); the client still sees each token exactly once because
publishing goes through a script that refuses any attempt but the current one (`publisher.Publisher`), and a new
attempt resumes from the chunks already published (`fencing.claim_attempt`).
"""
