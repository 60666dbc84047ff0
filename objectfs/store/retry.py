"""Retry policy of S3 requests: what is retried, how long to wait, how many at once.

ObjectFS retries S3 requests itself rather than through botocore's retry
modes, for three reasons: botocore ignores ``Retry-After``; it cannot retry
a GET whose body broke off after the headers (the body is read after the
call returns); and it knows nothing of the concurrency limit, which should
shrink while the server says SlowDown.

* Retried: connection failures and resets, timeouts, 5xx, throttling
  (SlowDown, 429, ...), and bodies that arrived short, wrong or corrupted
  (IncompleteBody, BadDigest, XAmzContentSHA256Mismatch).  Everything
  else (404, 403, 412, 400...) is final at once.
* Back-off: "full jitter" — a uniform random wait in
  [0, min(MAX_DELAY, BASE_DELAY * 2**attempt)], and never less than the
  server's ``Retry-After`` (capped at MAX_RETRY_AFTER).
* Concurrency (``Congestion``): additive increase, multiplicative
  decrease on the store's ``trio.CapacityLimiter``.  A throttling answer
  halves the limit (at most once per COOLDOWN, so one burst counts once);
  every success adds 1/limit, so the limit grows back by one per "window"
  of successful requests up to the configured ``max_connections``.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from typing import Callable

import trio

from ..errors import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

BASE_DELAY = 0.2
MAX_DELAY = 20.0
MAX_RETRY_AFTER = 60.0
COOLDOWN = 1.0

THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequests",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "503", "429"})
TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "OperationAborted", "500", "502", "504",
    # the body was damaged on the way: send or fetch it again
    "IncompleteBody", "WrongRange", "BadDigest", "XAmzContentSHA256Mismatch"})
THROTTLE_STATUS = frozenset({429, 503})
TRANSIENT_STATUS = frozenset({500, 502, 504})


def is_throttle(err: StoreError) -> bool:
    return err.code in THROTTLE_CODES or err.status in THROTTLE_STATUS


def is_retryable(err: StoreError) -> bool:
    return (isinstance(err, StoreUnavailable) or is_throttle(err)
            or err.code in TRANSIENT_CODES or err.status in TRANSIENT_STATUS)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def backoff(attempt: int, retry_after: float | None = None,
            rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** attempt)
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


class Congestion:
    """AIMD limit on the concurrent requests of one store."""

    def __init__(self, limiter: trio.CapacityLimiter, ceiling: int, *,
                 clock: Callable[[], float] = time.monotonic):
        self.limiter = limiter
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.clock = clock
        self._last_cut = -math.inf
        self.cuts = 0

    def throttled(self) -> None:
        now = self.clock()
        if now - self._last_cut < COOLDOWN:
            return  # one burst of throttling answers is one signal
        self._last_cut = now
        self.cuts += 1
        self.limit = max(1.0, self.limit / 2)
        self._apply()
        log.warning("S3 is throttling: at most %d concurrent requests",
                    self.limiter.total_tokens)

    def succeeded(self) -> None:
        if self.limit >= self.ceiling:
            return
        self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)
        self._apply()
        if self.limit >= self.ceiling:
            log.warning("S3 throttling over: back to %d concurrent requests", self.ceiling)

    def _apply(self) -> None:
        n = max(1, int(self.limit))
        if n != self.limiter.total_tokens:
            self.limiter.total_tokens = n
