"""Retry policy (objectfs/store/retry.py) and the GET body checks of s3.py."""

from __future__ import annotations

import email.utils
import hashlib
import time

import pytest
import trio
from hypothesis import given, strategies as st

from objectfs.errors import PreconditionFailed, StoreError, StoreUnavailable, store_error
from objectfs.store import retry
from objectfs.store.base import Part
from objectfs.store.s3 import _checked_body, multipart_etag


@given(attempt=st.integers(0, 40), retry_after=st.none() | st.floats(0, 1e6))
def test_backoff_is_bounded_jittered_and_honours_retry_after(attempt, retry_after):
    d = retry.backoff(attempt, retry_after)
    ceiling = min(retry.MAX_DELAY, retry.BASE_DELAY * 2 ** attempt)
    if retry_after is None:
        assert 0 <= d <= ceiling
    else:
        floor = min(retry_after, retry.MAX_RETRY_AFTER)
        assert floor <= d <= max(ceiling, floor)


def test_backoff_is_random():
    assert len({retry.backoff(5) for _ in range(20)}) > 10


def test_parse_retry_after():
    assert retry.parse_retry_after("3") == 3.0
    assert retry.parse_retry_after("0.5") == 0.5
    assert retry.parse_retry_after("-4") == 0.0
    assert retry.parse_retry_after(None) is None
    assert retry.parse_retry_after("soon") is None
    assert retry.parse_retry_after("nan") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry.parse_retry_after(later) <= 31


@pytest.mark.parametrize("err,retryable,throttle", [
    (store_error("SlowDown", status=503), True, True),
    (store_error("503", status=503), True, True),
    (store_error("TooManyRequests", status=429), True, True),
    (store_error("InternalError", status=500), True, False),
    (store_error("BadDigest", status=400), True, False),
    (store_error("XAmzContentSHA256Mismatch", status=400), True, False),
    (StoreError("IncompleteBody"), True, False),
    (StoreUnavailable("Unreachable", "ConnectionClosedError"), True, False),
    (store_error("NoSuchKey", status=404), False, False),
    (store_error("AccessDenied", status=403), False, False),
    (store_error("PreconditionFailed", status=412), False, False),
    (store_error("InvalidArgument", status=400), False, False),
])
def test_what_is_retried(err, retryable, throttle):
    assert retry.is_retryable(err) is retryable
    assert retry.is_throttle(err) is throttle


def test_congestion_halves_once_per_burst_and_recovers():
    now = [100.0]
    limiter = trio.CapacityLimiter(32)
    c = retry.Congestion(limiter, 32, clock=lambda: now[0])
    c.throttled()
    c.throttled()  # same burst
    assert limiter.total_tokens == 16 and c.cuts == 1
    for _ in range(6):
        now[0] += retry.COOLDOWN
        c.throttled()
    assert limiter.total_tokens == 1  # never below one
    successes = 0
    while limiter.total_tokens < 32:
        c.succeeded()
        successes += 1
    # additive increase: about limit successes per step of one
    assert 400 < successes < 600
    c.succeeded()
    assert limiter.total_tokens == 32


def _resp(data: bytes, **kw):
    r = {"ContentLength": len(data), "ETag": '"e1"'}
    r.update(kw)
    return r


def test_checked_body_accepts_exact_answers():
    data = b"0123456789"
    assert _checked_body(_resp(data), data, "k", 0, None, '"e1"') == data
    part = data[2:5]
    assert _checked_body(_resp(part, ContentRange="bytes 2-4/10"), part, "k", 2, 5, None) == part
    # range past the end: the server clamps it
    tail = data[8:]
    assert _checked_body(_resp(tail, ContentRange="bytes 8-9/10"), tail, "k", 8, 20, None) == tail
    # quoting differs between listings and headers on some servers
    assert _checked_body(_resp(data, ETag="e1"), data, "k", 0, None, '"e1"') == data
    # a server that ignored Range and sent the whole object
    assert _checked_body(_resp(data), data, "k", 2, 5, None) == b"234"


def test_checked_body_refuses_short_misplaced_or_changed_bodies():
    data = b"0123456789"
    with pytest.raises(StoreError) as e:
        _checked_body(_resp(data, ContentLength=20), data, "k", 0, None, None)
    assert e.value.code == "IncompleteBody" and retry.is_retryable(e.value)
    with pytest.raises(StoreError) as e:
        _checked_body(_resp(data[3:6], ContentRange="bytes 3-5/10"), data[3:6], "k", 2, 5,
                      None)
    assert e.value.code == "WrongRange" and retry.is_retryable(e.value)
    with pytest.raises(StoreError) as e:
        _checked_body(_resp(data[2:5], ContentRange="garbage"), data[2:5], "k", 2, 5, None)
    assert e.value.code == "WrongRange"
    with pytest.raises(PreconditionFailed):
        _checked_body(_resp(data, ETag='"e2"'), data, "k", 0, None, '"e1"')


def test_multipart_etag():
    a, b = hashlib.md5(b"a").hexdigest(), hashlib.md5(b"b").hexdigest()
    expected = hashlib.md5(bytes.fromhex(a) + bytes.fromhex(b)).hexdigest()
    assert multipart_etag([Part(1, f'"{a}"'), Part(2, f'"{b}"')]) == f'"{expected}-2"'
    assert multipart_etag([Part(1, '"not-md5"')]) is None
