"""The auto-pipelined Redis connection, against the real Redis on 127.0.0.1:6379 (keys under a
fresh prefix, deleted after each test), a closed port, and a server that never answers."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
import redis.asyncio
from redis.exceptions import ResponseError

from proxy import Coalescer, Pipe
from proxy.state import relay

REDIS_URL = "redis://127.0.0.1:6379/0"
ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def prefix():
    name = f"test-pipe-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    for db in (0, 3):
        await client.execute_command("SELECT", db)
        keys = [key async for key in client.scan_iter(match=f"{name}:*")]
        if keys:
            await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def pipe():
    pipe = Pipe(REDIS_URL, name="floodgate-test-pipe")
    yield pipe
    await pipe.close()


async def test_the_commands_of_one_turn_share_one_write_and_replies_keep_their_order(pipe, prefix):
    echo = pipe.script(ECHO)
    await pipe.execute("PING")  # connected: from here on, one write per turn
    writes = pipe.writes
    replies = await asyncio.gather(echo([f"{prefix}:a"], ["1"]), pipe.execute("SET", f"{prefix}:x", "v"),
                                   echo([f"{prefix}:b"], [2.5]), pipe.execute("GET", f"{prefix}:x"),
                                   *(echo([f"{prefix}:k"], [i]) for i in range(200)))
    assert pipe.writes == writes + 1
    assert replies[:4] == [[f"{prefix}:a".encode(), b"1"], b"OK", [f"{prefix}:b".encode(), b"2.5"], b"v"]
    assert [int(reply[1]) for reply in replies[4:]] == list(range(200))


async def test_calls_made_while_a_write_is_on_its_way_gather_into_the_next_one(pipe, prefix):
    """One write in flight: what later turns ask waits for its replies, then goes out in one write."""
    await pipe.execute("PING")
    slow = pipe.script("local t = redis.call('TIME'); local u = t[1] * 1e6 + t[2] "
                       "repeat local n = redis.call('TIME') until n[1] * 1e6 + n[2] - u > 100000 return 1")
    await pipe.execute("SCRIPT", "LOAD", slow.body)  # no NOSCRIPT round: one write for the call
    writes = pipe.writes
    first = slow([f"{prefix}:s"], [])
    later = []
    for _ in range(3):  # three turns while the script runs
        await asyncio.sleep(0.005)
        later.append(pipe.execute("PING"))
    assert pipe.writes == writes + 1 and not first.done()
    assert await first == 1 and await asyncio.gather(*later) == [b"PONG"] * 3
    assert pipe.writes == writes + 2


async def test_a_script_redis_forgot_is_sent_again_with_its_body(pipe, prefix):
    echo = pipe.script(ECHO)
    assert await echo([f"{prefix}:a"], ["x"]) == [f"{prefix}:a".encode(), b"x"]
    await pipe.execute("SCRIPT", "FLUSH")
    replies = await asyncio.gather(echo([f"{prefix}:b"], ["y"]), pipe.execute("PING"))
    assert replies == [[f"{prefix}:b".encode(), b"y"], b"PONG"]


async def test_an_error_reply_fails_only_its_call(pipe, prefix):
    results = await asyncio.gather(pipe.execute("SET", f"{prefix}:n", "text"), pipe.execute("INCR", f"{prefix}:n"),
                                   pipe.execute("PING"), return_exceptions=True)
    assert results[0] == b"OK" and results[2] == b"PONG"
    assert isinstance(results[1], ResponseError) and "not an integer" in str(results[1])


async def test_a_closed_port_fails_the_calls_and_a_closed_pipe_refuses_them():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = Pipe(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5)
    results = await asyncio.gather(down.execute("PING"), down.execute("PING"), return_exceptions=True)
    assert all(isinstance(r, ConnectionRefusedError) for r in results), results
    await down.close()
    with pytest.raises(ConnectionError, match="closed"):
        await down.execute("PING")


async def test_a_dropped_connection_fails_what_waited_on_it_and_the_next_call_connects_again(pipe, prefix):
    admin = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        await pipe.execute("PING")
        waiting = pipe.execute("BLPOP", f"{prefix}:never", 5)  # holds the connection, not Redis
        await asyncio.sleep(0.05)
        await _kill(admin, "floodgate-test-pipe")
        with pytest.raises(ConnectionError):
            await waiting
        assert await pipe.execute("PING") == b"PONG"
    finally:
        await admin.aclose()


async def _kill(admin: redis.asyncio.Redis, name: str) -> None:
    clients = await admin.client_list()
    for client in clients:
        if client.get("name") == name:
            await admin.execute_command("CLIENT", "KILL", "ID", client["id"])


async def test_a_silent_server_times_the_calls_out_and_is_left():
    """A peer that accepts and never answers: the waiting calls fail after the command timeout."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    pipe = Pipe(f"redis://127.0.0.1:{port}/0", command_timeout=0.2)
    try:
        results = await asyncio.gather(pipe.execute("PING"), pipe.execute("PING"), return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results), results
    finally:
        await pipe.close()
        silent.close()


async def test_the_url_selects_the_database(prefix):
    pipe = Pipe("redis://127.0.0.1:6379/3")
    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/3")
    try:
        await pipe.execute("SET", f"{prefix}:db", "three")
        assert await client.get(f"{prefix}:db") == b"three"
    finally:
        await pipe.close()
        await client.aclose()


async def test_a_wrong_password_is_a_connection_error():
    pipe = Pipe("redis://nobody:wrong@127.0.0.1:6379/0")
    try:
        with pytest.raises(ConnectionError, match="refused the connection"):
            await pipe.execute("PING")
    finally:
        await pipe.close()


def test_the_pipe_works_on_uvloop(prefix):
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list:
        pipe = Pipe(REDIS_URL)
        try:
            echo = pipe.script(ECHO)
            return await asyncio.gather(echo([f"{prefix}:u"], ["1"]), pipe.execute("PING"))
        finally:
            await pipe.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [[f"{prefix}:u".encode(), b"1"], b"PONG"]


async def test_a_coalescer_sends_what_one_turn_added_as_one_call():
    calls: list[list[int]] = []

    async def call(batch: list[int]) -> list[int]:
        calls.append(batch)
        return [n * 10 for n in batch]

    answers: dict[int, int] = {}
    failed: list[int] = []
    coalescer: Coalescer[int] = Coalescer(call, lambda batch, reply: answers.update(zip(batch, reply)),
                                          lambda batch, exc: failed.extend(batch))
    for n in (1, 2, 3):
        coalescer.add(n)
    await asyncio.sleep(0.01)
    coalescer.add(4)
    await asyncio.sleep(0.01)
    assert calls == [[1, 2, 3], [4]] and answers == {1: 10, 2: 20, 3: 30, 4: 40} and not failed
    coalescer.add(5)
    assert await coalescer.close() == []  # what was gathered goes at once, and its reply is awaited
    assert calls[-1] == [5] and answers[5] == 50


async def test_a_coalescer_fails_every_item_of_a_call_that_failed():
    async def call(batch: list[int]) -> list[int]:
        raise ConnectionError("down")

    failed: list[tuple[list[int], str]] = []
    coalescer: Coalescer[int] = Coalescer(call, lambda batch, reply: None,
                                          lambda batch, exc: failed.append((batch, str(exc))))
    coalescer.add(1)
    coalescer.add(2)
    await asyncio.sleep(0.01)
    assert failed == [([1, 2], "down")]


async def test_calls_nobody_waits_for_share_the_next_write_or_go_within_their_time(pipe, prefix):
    # Background items (settlements) wait for a write another call makes; with none, they go by themselves.
    echo = pipe.script(ECHO)
    await pipe.connect()
    answers: dict[str, bytes] = {}

    def coalescer(within: float) -> Coalescer[str]:
        return Coalescer(lambda batch: echo([f"{prefix}:{batch[0]}"], [",".join(batch)]),
                         lambda batch, reply: answers.update(dict.fromkeys(batch, reply[1])),
                         lambda batch, exc: None, pipe, within=within)

    waiting, quick = coalescer(30.0), coalescer(0.05)
    writes = pipe.writes
    waiting.add("a")
    waiting.add("b")
    await asyncio.sleep(0.02)
    assert pipe.writes == writes and not answers  # nothing else wrote: they wait
    assert await pipe.execute("PING") == b"PONG"  # a request's call: they go in its write
    await asyncio.sleep(0)
    assert pipe.writes == writes + 1 and answers == {"a": b"a,b", "b": b"a,b"}
    quick.add("c")
    await asyncio.sleep(0)
    assert "c" not in answers
    for _ in range(100):  # no other write: it goes within its time (0.05 s)
        await asyncio.sleep(0.01)
        if "c" in answers:
            break
    assert answers["c"] == b"c" and pipe.writes == writes + 2
    waiting.add("d")
    waiting.hurry()  # someone needs it: it goes at the end of this turn
    for _ in range(500):
        await asyncio.sleep(0.01)
        if "d" in answers:
            break
    assert answers["d"] == b"d"
    waiting.add("e")
    assert await waiting.close() == [] and answers["e"] == b"e"  # closing sends it at once


async def test_connecting_loads_the_scripts_so_their_first_call_is_one_write(prefix):
    admin = redis.asyncio.Redis.from_url(REDIS_URL)
    pipe = Pipe(REDIS_URL)
    try:
        echo = pipe.script(ECHO + " -- " + prefix)  # a body Redis cannot know yet
        await admin.script_flush()
        await pipe.connect()
        assert await admin.script_exists(echo.sha) == [True]
        writes = pipe.writes
        assert await echo([f"{prefix}:a"], ["1"]) == [f"{prefix}:a".encode(), b"1"]
        assert pipe.writes == writes + 1  # no NOSCRIPT, no EVAL again
    finally:
        await pipe.close()
        await admin.aclose()


async def test_connect_raises_when_redis_cannot_be_reached():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pipe = Pipe(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5)
    try:
        with pytest.raises(ConnectionError, match="ConnectionRefusedError"):
            await pipe.connect()
    finally:
        await pipe.close()


async def test_relay_passes_on_a_result_an_error_or_a_cancellation():
    loop = asyncio.get_running_loop()
    sources = [loop.create_future() for _ in range(4)]
    targets = [loop.create_future() for _ in range(4)]
    relay(sources[0], targets[0], lambda n: n * 2)
    relay(sources[1], targets[1], lambda n: 1 / n)
    relay(sources[2], targets[2])
    relay(sources[3], targets[3])
    targets[3].cancel()  # its caller left: the outcome is dropped
    sources[0].set_result(21)
    sources[1].set_result(0)
    sources[2].cancel()
    sources[3].set_result(1)
    assert await targets[0] == 42
    with pytest.raises(ZeroDivisionError):
        await targets[1]
    await asyncio.sleep(0)
    assert targets[2].cancelled() and targets[3].cancelled()
