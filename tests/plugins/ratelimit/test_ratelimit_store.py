"""Tests of the ratelimit plugin's bucket store (plugins/ratelimit/store.py), on an injected clock."""

from __future__ import annotations

import math

import pytest

from plugins.ratelimit.store import Claim, LocalShareStore, MemoryBucketStore


def test_store_refills_lazily_and_caps_at_burst() -> None:
    store = MemoryBucketStore()
    claim = Claim("k", rate=2.0, burst=4.0, amount=1.0)
    for _ in range(4):
        assert store.take([claim], now=10.0).granted
    grant = store.take([claim], now=10.0)
    assert not grant.granted and grant.levels == (0.0,)
    assert grant.wait == pytest.approx(0.5)  # deficit 1 / rate 2
    assert store.take([claim], now=10.5).granted  # exactly due: no float dust refusal
    assert store.peek([claim], now=100.0).levels == (4.0,)  # long idle: full, not more


def test_store_take_is_all_or_nothing() -> None:
    store = MemoryBucketStore()
    wide = Claim("global", rate=10.0, burst=10.0, amount=1.0)
    narrow = Claim("key", rate=1.0, burst=1.0, amount=1.0)
    assert store.take([wide, narrow], now=0.0).granted
    grant = store.take([wide, narrow], now=0.0)
    assert not grant.granted and grant.blocking == 1
    # the refused call took nothing from the global bucket
    assert store.peek([wide], now=0.0).levels == (9.0,)


def test_store_wait_is_the_longest_deficit() -> None:
    store = MemoryBucketStore()
    requests = Claim("r", rate=4.0, burst=1.0, amount=1.0)
    tokens = Claim("t", rate=10.0, burst=100.0, amount=80.0)
    assert store.take([requests, tokens], now=0.0).granted  # r: 0, t: 20
    grant = store.peek([requests, tokens], now=0.0)
    assert (grant.granted, grant.blocking) == (False, 1)
    assert grant.wait == pytest.approx(6.0)  # tokens: (80 - 20) / 10 beats requests: 1 / 4
    assert store.peek([requests, tokens], now=6.0).granted
    # a bucket that never refills (a concurrency slot), or a claim larger than the bucket: no finite wait
    slot = Claim("c", rate=0.0, burst=1.0, amount=1.0)
    assert store.take([slot], now=0.0).granted
    assert store.peek([slot], now=1e6).wait == math.inf
    assert store.peek([Claim("t2", 10.0, 100.0, 101.0)], now=0.0).wait == math.inf


def test_store_give_back_refunds_and_charges() -> None:
    store = MemoryBucketStore()
    claim = Claim("t", rate=1.0, burst=100.0, amount=60.0)
    assert store.take([claim], now=0.0).granted
    assert store.give_back(claim, 30.0, now=0.0) == 70.0  # refund
    assert store.give_back(claim, 1000.0, now=0.0) == 100.0  # capped at the burst
    assert store.give_back(claim, -150.0, now=0.0) == -50.0  # an overrun leaves a debt
    grant = store.peek([claim], now=0.0)
    assert grant.wait == pytest.approx(110.0)  # the debt is paid off first
    slot = Claim("c", rate=0.0, burst=2.0, amount=1.0)
    store.take([slot], now=0.0)
    assert store.give_back(slot, 1.0, now=0.0) == 2.0


def test_store_prunes_full_buckets() -> None:
    store = MemoryBucketStore(prune_every=2)
    store.take([Claim("a", 1.0, 1.0, 1.0)], now=0.0)
    store.take([Claim("b", 1.0, 1.0, 1.0)], now=5.0)  # second take: prune; "a" is full again by now
    assert len(store) == 1
    assert store.peek([Claim("b", 1.0, 1.0, 1.0)], now=5.0).levels == (0.0,)


def test_store_settle_gives_back_in_one_call() -> None:
    store = MemoryBucketStore()
    tokens = Claim("t", rate=1.0, burst=100.0, amount=60.0)
    slot = Claim("c", rate=0.0, burst=1.0, amount=1.0)
    assert store.take([tokens, slot], now=0.0).granted
    assert not store.take([slot], now=5.0).granted
    assert store.settle([(tokens, 50.0), (slot, 1.0)], lease="", now=0.0) is None  # synchronous: no coroutine
    assert store.peek([tokens, slot], now=0.0).levels == (90.0, 1.0)


def test_local_share_divides_every_limit_by_the_workers() -> None:
    """The degraded fallback: each of 4 workers enforces a quarter of each limit from local buckets."""
    store = LocalShareStore(4)
    requests = Claim("r", rate=8.0, burst=8.0, amount=1.0)  # a share: 2/s, burst 2
    assert [store.take([requests], now=0.0).granted for _ in range(3)] == [True, True, False]
    grant = store.peek([requests], now=0.0)
    assert grant.wait == pytest.approx(0.5)  # refills at 2/s
    tokens = Claim("t", rate=100.0, burst=1000.0, amount=200.0)  # a share: 250 tokens
    assert store.take([tokens], now=0.0).granted
    assert not store.take([tokens], now=0.0).granted
    store.settle([(tokens, 150.0)], lease="", now=0.0)  # the refund lands in the share, capped at it
    assert store.peek([tokens], now=0.0).levels == (200.0,)


def test_a_local_share_is_never_smaller_than_one_request() -> None:
    store = LocalShareStore(4)
    slot = Claim("c", rate=0.0, burst=2.0, amount=1.0)  # half a slot per worker would refuse everyone
    assert store.take([slot], now=0.0).granted
    assert not store.take([slot], now=0.0).granted
    store.settle([(slot, 1.0)], lease="", now=0.0)
    assert store.take([slot], now=0.0).granted
    with pytest.raises(ValueError):
        LocalShareStore(0)
