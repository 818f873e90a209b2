"""The Redis protocol between the API processes, the workers and the operator: one module per concern.

`names` (every key, stream and channel), `connection` (clients and the transport takeover), `command_connection`
(the hot path's pipelined connection), `scripts` (the Lua scripts under `lua/`), `queue` (the request streams and
their consumer group), `fencing` (attempts), `publisher` (the worker's writes), `subscriber` (the API's reply
channel), `requests` (cancel flags, stored results, progress and hold markers), `registry` (live workers), `memory`
(how full Redis is), `rate_limit`.

Delivery is at-least-once (consumer group + XAUTOCLAIM); the client still sees each token exactly once because
publishing goes through a script that refuses any attempt but the current one (`publisher.Publisher`), and a new
attempt resumes from the chunks already published (`fencing.claim_attempt`).

At its memory limit (`maxmemory`, no eviction) Redis refuses the commands that could grow memory, and refuses a
script only if its first write could: a script that has written cannot be stopped halfway. The API stops taking
new requests below that limit (`memory`); what the workers write there ends the requests they hold and frees
memory, so each of their scripts writes first something that cannot grow it (an expiry refresh).

When Redis loses its data (a restart without persistence, a stale snapshot), a request it lost is told apart
from one a worker still generates by the hold marker the worker refreshes (`requests.request_is_lost`), and
progress is read by seq, never by list index (`requests.contiguous_run`).
"""
