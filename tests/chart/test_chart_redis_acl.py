"""The bundled Redis's ACL, as the chart renders it, in a real redis-server: the init container's script turns the
rules and the Secret's passwords into an ACL file (hashes only) that Redis loads; each component's code runs
under its own user, and each user is refused what its component never does."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from chart_render import REPO_ROOT, Manifest, container, find, pod_spec, render_chart
from redis.exceptions import NoPermissionError

from gorgon.api.config import hash_api_key
from gorgon.api.enqueuer import BatchingEnqueuer
from gorgon.core.protocol import Chunk, RequestPayload, WireSampling
from gorgon.core.redis.fencing import claim_attempt
from gorgon.core.redis.memory import MemoryGuard
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.publisher import EntryRef, Publication, Publisher, StepWork
from gorgon.core.redis.queue import (
    autoclaim_stale,
    backlog,
    dead_letter,
    ensure_group,
    finish_entries,
    hand_back,
    heartbeat_entries,
    read_entries,
    undelivered,
)
from gorgon.core.redis.rate_limit import count_request
from gorgon.core.redis.registry import live_workers, register_worker, unregister_worker
from gorgon.core.redis.requests import read_progress, read_result, request_cancel, request_is_lost
from gorgon.core.redis.subscriber import TokenSubscriber
from gorgon.local.processes import LocalServices, free_port

pytestmark = pytest.mark.processes

NAMESPACE = "gorgon"  # the chart's default redisNamespace, which the rules are rendered for
NAMES = RedisNames(NAMESPACE)
USERS = ("default", "api", "worker", "operator")
KEDA_USERS = ("default", "api", "worker", "keda")
"""The users with autoscaling.mode=keda: KEDA's instead of the operator's."""
MODEL = "m"
REDIS_PACKAGE = "gorgon.core.redis"
COMPONENT_SOURCES = {
    "api": REPO_ROOT / "services" / "gorgon" / "api",
    "worker": REPO_ROOT / "services" / "gorgon" / "worker",
    "operator": REPO_ROOT / "operator" / "gorgon_operator",
}
LOCAL_ONLY = {REPO_ROOT / "operator" / "gorgon_operator" / "local.py"}
"""`gorgon up`'s actuator: it runs beside an embedded Redis, never against the chart's."""
EXERCISED = {
    "api": {
        "memory.MemoryGuard",
        "queue.enqueue_many",
        "requests.read_progress",
        "requests.read_result",
        "requests.request_cancel",
        "requests.request_is_lost",
        "registry.live_workers",
        "rate_limit.count_request",
        "subscriber.TokenSubscriber",
    },
    "worker": {
        "fencing.claim_attempt",
        "publisher.Publisher",
        "queue.autoclaim_stale",
        "queue.dead_letter",
        "queue.ensure_group",
        "queue.finish_entries",
        "queue.hand_back",
        "queue.heartbeat_entries",
        "queue.read_entries",
        "queue.undelivered",
        "registry.live_workers",
        "registry.register_worker",
        "registry.unregister_worker",
    },
    "operator": {"queue.backlog"},
}
"""What each component's code imports from the Redis package, every item run under its user below."""
PASSIVE_MODULES = {"names", "connection", "command_connection", "scripts"}
"""Modules that name things or open connections: the commands they send are those of the items above."""
PASSIVE_NAMES = {"queue.StreamEntry", "publisher.EntryRef", "publisher.Publication", "publisher.StepWork"}
"""Values the operations take or return."""


def redis_server_7() -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.split("v=", 1)[1].split(".", 1)[0])
    return binary if major >= 7 else None


@dataclass
class AclRedis:
    port: int
    passwords: dict[str, str]
    acl_file: Path

    def url(self, user: str) -> str:
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"


def _write_acl_file(
    redis_manifests: tuple[Manifest, Manifest], directory: Path, passwords: dict[str, str]
) -> Path:
    """Run the init container's script as the pod would, on copies of its inputs."""
    config_map, statefulset = redis_manifests
    init = next(c for c in pod_spec(statefulset)["initContainers"] if c["name"] == "acl")
    env = {item["name"]: item["value"] for item in init["env"]}
    rules = directory / "acl-rules"
    rules.write_text(config_map["data"]["acl-rules"])
    password_dir = directory / "passwords"
    password_dir.mkdir()
    for user, password in passwords.items():
        (password_dir / user).write_text(password)
    acl_file = directory / "users.acl"
    run_env = {**env, "ACL_RULES": str(rules), "PASSWORDS_DIR": str(password_dir), "ACL_FILE": str(acl_file)}
    command = init["command"]
    assert command[:2] == ["sh", "-c"]
    subprocess.run(command, env={**run_env, "PATH": "/usr/bin:/bin"}, check=True, timeout=30)
    return acl_file


def _localised(config: str, directory: Path, acl_file: Path) -> str:
    """The chart's redis.conf with its paths inside the pod replaced by `directory` and `acl_file`."""
    paths = {"dir": str(directory), "aclfile": str(acl_file)}
    lines = []
    for line in config.splitlines():
        directive = line.split(maxsplit=1)[0] if line.strip() else ""
        lines.append(f"{directive} {paths[directive]}" if directive in paths else line)
    assert all(f"{directive} " in config for directive in paths), config
    return "\n".join(lines) + "\n"


def _redis_manifests(manifests: list[Manifest]) -> tuple[Manifest, Manifest]:
    return find(manifests, "ConfigMap", "-redis"), find(manifests, "StatefulSet", "-redis")


@pytest.fixture(scope="module")
def redis_manifests() -> tuple[Manifest, Manifest]:
    return _redis_manifests(render_chart())


@pytest.fixture(scope="module")
def keda_manifests() -> list[Manifest]:
    return render_chart(set_values={"autoscaling.mode": "keda"})


@pytest.fixture(scope="module")
def acl_redis(
    redis_manifests: tuple[Manifest, Manifest], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AclRedis]:
    with _running_acl_redis(redis_manifests, tmp_path_factory.mktemp("acl-redis"), USERS) as server:
        yield server


@pytest.fixture(scope="module")
def keda_acl_redis(
    keda_manifests: list[Manifest], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AclRedis]:
    directory = tmp_path_factory.mktemp("keda-acl-redis")
    with _running_acl_redis(_redis_manifests(keda_manifests), directory, KEDA_USERS) as server:
        yield server


@contextlib.contextmanager
def _running_acl_redis(
    redis_manifests: tuple[Manifest, Manifest], directory: Path, users: tuple[str, ...]
) -> Iterator[AclRedis]:
    """A redis-server loaded with the chart's redis.conf and the ACL file its init container writes."""
    binary = redis_server_7()
    if binary is None:
        pytest.skip("needs redis-server 7 or newer on PATH (the chart's Redis is 7.2)")
    passwords = {user: secrets.token_urlsafe(24) for user in users}
    acl_file = _write_acl_file(redis_manifests, directory, passwords)
    config = directory / "redis.conf"
    config.write_text(_localised(redis_manifests[0]["data"]["redis.conf"], directory, acl_file))
    port = free_port()
    process = subprocess.Popen(
        [binary, str(config), "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = AclRedis(port, passwords, acl_file)
    admin = redis.Redis.from_url(server.url("default"))
    deadline = time.monotonic() + 10
    while True:
        try:
            admin.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.05)
    admin.close()
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
async def as_user(acl_redis: AclRedis) -> AsyncIterator[dict[str, aioredis.Redis]]:
    clients = {user: aioredis.Redis.from_url(acl_redis.url(user)) for user in USERS}
    yield clients
    await clients["default"].flushall()
    for client in clients.values():
        await client.aclose()


def payload(request_id: str, reply_to: str, model: str = MODEL) -> RequestPayload:
    return RequestPayload(
        request_id,
        model,
        WireSampling(max_tokens=4),
        deadline=time.time() + 30,
        stream=True,
        reply_to=reply_to,
    )


# --- the file


def test_the_acl_file_holds_each_user_with_a_password_hash_and_no_password(acl_redis: AclRedis) -> None:
    text = acl_redis.acl_file.read_text()
    assert [line.split()[:2] for line in text.splitlines()] == [["user", user] for user in USERS]
    for password in acl_redis.passwords.values():
        assert password not in text
        assert f"#{hashlib.sha256(password.encode()).hexdigest()}" in text
    assert acl_redis.acl_file.stat().st_mode & 0o077 == 0


def test_the_server_has_no_password_on_its_command_line(redis_manifests: tuple[Manifest, Manifest]) -> None:
    redis_container = container(redis_manifests[1], "redis")
    assert redis_container["command"] == ["redis-server", "/etc/redis/conf/redis.conf"]
    assert "args" not in redis_container
    assert [item["name"] for item in redis_container["env"]] == ["REDISCLI_AUTH"]


@pytest.mark.parametrize("user", USERS)
def test_each_user_signs_in_with_its_own_password_only(acl_redis: AclRedis, user: str) -> None:
    own = redis.Redis.from_url(acl_redis.url(user))
    assert own.ping()
    own.close()
    other = next(name for name in USERS if name != user)
    wrong = redis.Redis(port=acl_redis.port, username=user, password=acl_redis.passwords[other])
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    wrong.close()


# --- what each component does, under its user


async def test_the_api_user_can_do_what_the_api_does(as_user: dict[str, aioredis.Redis]) -> None:
    api, worker = as_user["api"], as_user["worker"]
    assert await api.ping()
    assert await live_workers(api, NAMES) == []  # the SCAN fallback of an empty index
    await register_worker(worker, NAMES, MODEL, "w-stays", {"model": MODEL, "context_length": 64}, 30)
    await register_worker(worker, NAMES, MODEL, "w-expires", {"model": MODEL, "context_length": 64}, 0.05)
    await asyncio.sleep(0.1)
    assert [record["model"] for record in await live_workers(api, NAMES)] == [MODEL]  # pruned the expired one
    assert await as_user["default"].scard(NAMES.worker_index()) == 1
    subscriber = TokenSubscriber(api, NAMES)
    await subscriber.start()
    enqueuer = BatchingEnqueuer(api, NAMES, max_backlog=10)
    guard = MemoryGuard(api, 0.9)
    try:
        assert await guard.over_limit() is False
        assert guard.fill is not None, "the chart's maxmemory gives the guard a limit to compare against"
        entry_id = await enqueuer.enqueue(payload("r1", subscriber.channel))
        assert entry_id is not None
        assert await request_is_lost(api, NAMES, MODEL, entry_id, "r1") is False
        await request_cancel(api, NAMES, "r1", 30)
        assert await read_result(api, NAMES, "r1") is None
        assert await read_progress(api, NAMES, "r1", 0) == []
        assert await count_request(api, NAMES, "key:abc", 60, time.time()) == 1
    finally:
        await guard.close()
        await enqueuer.close()
        await subscriber.close()


async def test_the_worker_user_can_do_what_the_worker_does(as_user: dict[str, aioredis.Redis]) -> None:
    worker, api = as_user["worker"], as_user["api"]
    channel = NAMES.reply_channel("api-1")
    assert await worker.ping()
    await ensure_group(worker, NAMES, MODEL)
    await register_worker(worker, NAMES, MODEL, "w1", {"model": MODEL, "context_length": 64}, 30)
    enqueuer = BatchingEnqueuer(api, NAMES, max_backlog=0)
    for request_id in ("r1", "r2", "r3", "r4"):
        await enqueuer.enqueue(payload(request_id, channel))
    await enqueuer.close()
    publisher = Publisher(worker, NAMES)
    try:
        await publisher.load()
        (first_id, _), (second_id, _) = await publisher.read_new(MODEL, "w1", 2, None)
        await heartbeat_entries(worker, NAMES, MODEL, "w1", [first_id, second_id])
        assert [
            entry_id for entry_id, _ in await read_entries(worker, NAMES, MODEL, "w1", 10, None, own=True)
        ] == [
            first_id,
            second_id,
        ]
        assert await undelivered(worker, NAMES, MODEL) == 2  # the waiting gauge: 4 queued, 2 read
        assert [record["model"] for record in await live_workers(worker, NAMES, MODEL)] == [MODEL]
        await request_cancel(api, NAMES, "r2", 30)
        stream = NAMES.request_stream(MODEL)
        final = Publication(Chunk("r1", attempt=1, seq=0, final=True), True, Chunk("r1", 1, 0), 30, channel)
        work = StepWork(
            publications=[
                Publication(final.chunk, True, final.result, 30, channel, EntryRef(stream, first_id))
            ],
            ack_ids=[second_id],
            running_ids=["r2"],
            read_count=1,
        )
        reply = await publisher.sync_step(MODEL, "w1", work)
        assert reply.published == [True] and reply.cancelled == {"r2"} and len(reply.new_entries) == 1
        third_id = reply.new_entries[0][0]
        assert await publisher.publish([Publication(Chunk("r3", 1, 0), True, None, 30, channel)]) == [True]
        claim = await claim_attempt(worker, NAMES, "r3", 30)
        assert claim.attempt == 2 and len(claim.published) == 1
        await hand_back(worker, NAMES, MODEL, "w1", [third_id], idle_ms=60_000)
        assert [entry_id for entry_id, _ in await autoclaim_stale(worker, NAMES, MODEL, "w2", 1000, 5)] == [
            third_id
        ]
        await finish_entries(worker, NAMES, MODEL, [third_id])
        (fourth_id, fourth), *_ = await read_entries(worker, NAMES, MODEL, "w2", 1, None, own=False)
        assert fourth is not None
        await dead_letter(worker, NAMES, MODEL, fourth_id, fourth.encode(), "too many deliveries")
        assert await backlog(as_user["operator"], NAMES, MODEL) == 0
        assert await as_user["default"].xlen(NAMES.dead_letter_stream(MODEL)) == 1
    finally:
        await publisher.close()
    await unregister_worker(worker, NAMES, MODEL, "w1")


async def test_the_operator_user_reads_the_backlog(as_user: dict[str, aioredis.Redis]) -> None:
    await as_user["default"].xadd(NAMES.request_stream(MODEL), {"payload": "x"})
    assert await as_user["operator"].ping()
    assert await backlog(as_user["operator"], NAMES, MODEL) == 1


# --- and nothing else

OUTSIDE = "other-release:requests:m"

REFUSED = {
    "api": [
        ("XACK", NAMES.request_stream(MODEL), "workers", "0-1"),
        ("XDEL", NAMES.request_stream(MODEL), "0-1"),
        ("XREADGROUP", "GROUP", "workers", "c", "STREAMS", NAMES.request_stream(MODEL), ">"),
        ("SET", NAMES.result_key("r"), "forged"),
        ("PUBLISH", NAMES.reply_channel("x"), "forged"),
        ("XADD", OUTSIDE, "*", "payload", "x"),
        ("GET", "other-release:result:r"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
        ("DEL", NAMES.request_stream(MODEL)),
        ("EVAL", "return 1", "0"),
        ("ACL", "LIST"),
    ],
    "worker": [
        ("FLUSHALL",),
        ("CONFIG", "SET", "maxmemory", "0"),
        ("KEYS", "*"),
        ("XADD", OUTSIDE, "*", "payload", "x"),
        ("INCR", NAMES.rate_limit_key("k", 1)),
        ("SUBSCRIBE", NAMES.reply_channel("x")),
        ("PUBLISH", "other-release:replies:x", "forged"),
        ("EVAL", "return 1", "0"),
        ("SHUTDOWN",),
    ],
    "operator": [
        ("XADD", NAMES.request_stream(MODEL), "*", "payload", "x"),
        ("XRANGE", NAMES.request_stream(MODEL), "-", "+"),
        ("XLEN", OUTSIDE),
        ("GET", NAMES.result_key("r")),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
    ],
}


@pytest.mark.parametrize(
    ("user", "command"), [(user, command) for user, commands in REFUSED.items() for command in commands]
)
async def test_each_user_is_refused_what_its_component_never_does(
    as_user: dict[str, aioredis.Redis], user: str, command: tuple[str, ...]
) -> None:
    with pytest.raises(NoPermissionError):
        await as_user[user].execute_command(*command)


# --- KEDA's user (autoscaling.mode=keda)


def _keda_trigger(keda_manifests: list[Manifest]) -> dict:
    (trigger,) = find(keda_manifests, "ScaledObject")["spec"]["triggers"]
    return trigger


def test_keda_signs_in_as_a_user_of_its_own_with_a_password_from_the_redis_secret(
    keda_manifests: list[Manifest],
) -> None:
    trigger = _keda_trigger(keda_manifests)
    assert trigger["metadata"]["username"] == "keda"
    authentication = find(keda_manifests, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": authentication["metadata"]["name"]}
    secret = find(keda_manifests, "Secret", "-redis")
    assert authentication["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": secret["metadata"]["name"], "key": "keda-password"}
    ]
    assert sorted(secret["data"]) == ["api-password", "keda-password", "redis-password", "worker-password"]
    rules = find(keda_manifests, "ConfigMap", "-redis")["data"]["acl-rules"]
    assert [line.split()[0] for line in rules.splitlines()] == list(KEDA_USERS)
    passwords = next(
        v
        for v in pod_spec(find(keda_manifests, "StatefulSet", "-redis"))["volumes"]
        if v["name"] == "passwords"
    )
    assert [item["path"] for item in passwords["secret"]["items"]] == list(KEDA_USERS)


@pytest.fixture
async def as_keda_user(keda_acl_redis: AclRedis) -> AsyncIterator[dict[str, aioredis.Redis]]:
    clients = {user: aioredis.Redis.from_url(keda_acl_redis.url(user)) for user in KEDA_USERS}
    yield clients
    await clients["default"].flushall()
    for client in clients.values():
        await client.aclose()


async def test_keda_reads_the_stream_length_as_its_scaler_connects(
    keda_acl_redis: AclRedis, keda_manifests: list[Manifest]
) -> None:
    """KEDA's Redis client signs in with HELLO 3 and the credentials, PINGs, then sends XLEN of the trigger's
    stream (its redis-streams scaler with streamLength)."""
    stream = _keda_trigger(keda_manifests)["metadata"]["stream"]
    admin = aioredis.Redis.from_url(keda_acl_redis.url("default"))
    keda = aioredis.Redis(
        port=keda_acl_redis.port, username="keda", password=keda_acl_redis.passwords["keda"], protocol=3
    )
    try:
        assert await keda.xlen(stream) == 0
        await admin.xadd(stream, {"payload": "x"})
        assert await keda.ping()
        assert await keda.xlen(stream) == 1
    finally:
        await admin.flushall()
        await admin.aclose()
        await keda.aclose()


async def test_the_stream_length_is_the_backlog_and_the_group_lag_is_not(
    as_keda_user: dict[str, aioredis.Redis], keda_manifests: list[Manifest]
) -> None:
    """Why the trigger reads streamLength: with requests queued, running and finished out of order, as the
    workers' batches finish them, XLEN counts the queued and running ones (the operator's backlog) and is 0 when
    all are done, while XINFO GROUPS lag leaves the running ones out or is unknown (null)."""
    stream = _keda_trigger(keda_manifests)["metadata"]["stream"]
    model = stream.removeprefix(NAMES.request_stream(""))
    api, worker, keda = as_keda_user["api"], as_keda_user["worker"], as_keda_user["keda"]
    await ensure_group(worker, NAMES, model)
    enqueuer = BatchingEnqueuer(api, NAMES, max_backlog=0)
    for request_id in ("r1", "r2", "r3", "r4"):
        await enqueuer.enqueue(payload(request_id, NAMES.reply_channel("api-1"), model))
    await enqueuer.close()
    (first_id, _), (second_id, _) = await read_entries(worker, NAMES, model, "w1", 2, None, own=False)
    await finish_entries(worker, NAMES, model, [second_id])
    assert await keda.xlen(stream) == await backlog(keda, NAMES, model) == 3
    (group,) = await as_keda_user["default"].xinfo_groups(stream)
    assert group["lag"] != 3
    remaining = await read_entries(worker, NAMES, model, "w1", 10, None, own=False)
    await finish_entries(worker, NAMES, model, [first_id, *(entry_id for entry_id, _ in remaining)])
    assert await keda.xlen(stream) == 0


KEDA_REFUSED = [
    ("XINFO", "GROUPS", NAMES.request_stream(MODEL)),
    ("XPENDING", NAMES.request_stream(MODEL), "workers"),
    ("XRANGE", NAMES.request_stream(MODEL), "-", "+"),
    ("XADD", NAMES.request_stream(MODEL), "*", "payload", "x"),
    ("XREADGROUP", "GROUP", "workers", "c", "STREAMS", NAMES.request_stream(MODEL), ">"),
    ("XLEN", OUTSIDE),
    ("GET", NAMES.result_key("r")),
    ("INFO",),
    ("CONFIG", "GET", "*"),
    ("KEYS", "*"),
    ("FLUSHALL",),
]


@pytest.mark.parametrize("command", KEDA_REFUSED, ids=lambda command: " ".join(command[:2]))
async def test_the_keda_user_is_refused_everything_but_reading_the_stream_length(
    as_keda_user: dict[str, aioredis.Redis], command: tuple[str, ...]
) -> None:
    with pytest.raises(NoPermissionError):
        await as_keda_user["keda"].execute_command(*command)


def test_without_the_operator_there_is_no_operator_user(keda_acl_redis: AclRedis) -> None:
    intruder = redis.Redis(
        port=keda_acl_redis.port, username="operator", password=keda_acl_redis.passwords["keda"]
    )
    with pytest.raises(redis.AuthenticationError):
        intruder.ping()
    intruder.close()


# --- the list above covers the code


def _redis_names_imported(source: Path) -> set[str]:
    """`module.name` of everything the package at `source` imports from gorgon.core.redis's modules."""
    imported = set()
    for path in set(source.rglob("*.py")) - LOCAL_ONLY:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{REDIS_PACKAGE}."):
                module = (node.module or "").removeprefix(f"{REDIS_PACKAGE}.")
                if module not in PASSIVE_MODULES:
                    imported |= {f"{module}.{alias.name}" for alias in node.names}
    return imported


@pytest.mark.parametrize("component", sorted(COMPONENT_SOURCES))
def test_every_redis_operation_a_component_imports_is_run_under_its_user(component: str) -> None:
    imported = {
        name
        for name in _redis_names_imported(COMPONENT_SOURCES[component])
        if name not in PASSIVE_NAMES and not name.split(".")[1].isupper()  # constants
    }
    assert imported == EXERCISED[component]


# --- the platform end to end


def test_api_and_worker_serve_requests_under_their_users(acl_redis: AclRedis, tmp_path: Path) -> None:
    key = "gorgon-" + uuid.uuid4().hex
    keys_file = tmp_path / "keys"
    keys_file.write_text(key)
    worker = LocalServices(acl_redis.url("worker"), NAMESPACE, {"GORGON_WORKER_READ_BLOCK_MS": "20"})
    api = LocalServices(acl_redis.url("api"), NAMESPACE)
    try:
        worker.start_worker("echo", 0.001)
        url = api.start_api(keys_file=str(keys_file), rate_limit_per_minute="100")
        headers = {"Authorization": f"Bearer {key}"}
        whole = httpx.post(f"{url}/v1/completions", json={"prompt": "ab", "max_tokens": 4}, headers=headers)
        assert whole.status_code == 200, whole.text
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=chat, headers=headers, timeout=30
        ) as reply:
            assert reply.status_code == 200
            assert list(reply.iter_lines())[-2] == "data: [DONE]"
        assert httpx.get(f"{url}/v1/models", headers=headers).json()["data"][0]["id"] == "echo"
        assert httpx.get(f"{url}/ready").status_code == 200
        long = {"prompt": "a", "max_tokens": 3000, "stream": True, "use_speculative": False}
        with httpx.stream("POST", f"{url}/v1/completions", json=long, headers=headers, timeout=30) as reply:
            assert next(reply.iter_lines()).startswith("data: ")
        operator = redis.Redis.from_url(acl_redis.url("operator"))
        deadline = time.monotonic() + 10
        while operator.xlen(NAMES.request_stream("echo")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert operator.xlen(NAMES.request_stream("echo")) == 0, "the cancelled request was not dropped"
        operator.close()
        assert hash_api_key(key) not in acl_redis.acl_file.read_text()
    finally:
        api.stop(grace_s=10)
        worker.stop(grace_s=10)
        admin = redis.Redis.from_url(acl_redis.url("default"))
        admin.flushall()
        admin.close()
