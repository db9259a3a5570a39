"""The Redis command packer: the same bytes as redis-py's, one pass, used by the state's client."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from proxy.state import packing
from proxy.state.packing import PackedConnection, pack, packed_class

CASES = [
    ("GET", "k"),
    ("SET", "key", 0.1, "PX", 5000),
    ("EVALSHA", "abc", 3, "fg:a", "fg:b", "fg:c", "1.5 2 3.25", b"\x00\xffbinary", "中文 with spaces", -7, 1e-9),
    ("EVALSHA", "sha", 300, *(f"fg:key:{i}" for i in range(300)), *(f"50.0 10.0 {i}.5" for i in range(180))),
]


@pytest.mark.parametrize("args", CASES, ids=["get", "set", "mixed", "batch"])
def test_bytes_are_redis_pys_with_and_without_hiredis(args, monkeypatch):
    expected = b"".join(Connection().pack_command(*args))
    assert pack(args) == expected
    monkeypatch.setattr(packing, "_hiredis_pack", None)
    assert pack(args) == expected


def test_multi_word_commands_are_split_like_redis_py():
    assert PackedConnection().pack_command("CONFIG GET", "maxmemory") == Connection().pack_command(
        "CONFIG GET", "maxmemory")


def test_each_connection_kind_gets_its_packed_variant():
    for kind in (Connection, SSLConnection, UnixDomainSocketConnection):
        packed = packed_class(kind)
        assert packed is not kind and issubclass(packed, kind)
    assert packed_class(object) is object  # a class it does not know is left alone
