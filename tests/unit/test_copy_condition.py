"""x-amz-copy-source-if-match on servers that refuse it for objects uploaded in
parts (Swift's s3api answers 412 though the ETag matches): S3Store._copy_if
checks such a condition with a HEAD instead, once a refusal is contradicted."""

from __future__ import annotations

import pytest
import trio

from objectfs.errors import PreconditionFailed, store_error
from objectfs.store.base import ObjectInfo
from objectfs.store.s3 import S3Store


def make(etag: str, refuses_multipart: bool):
    store = S3Store.__new__(S3Store)   # no client: only _copy_if runs
    store.copy_if_match_multipart = True
    now = {"etag": etag}
    sent: list = []
    heads: list = []

    async def head(key):
        heads.append(key)
        return ObjectInfo(key=key, size=1, etag=now["etag"], mtime_ns=0)

    async def copy(cond):
        sent.append(cond)
        if cond and (cond != now["etag"] or ("-" in cond and refuses_multipart)):
            raise store_error("PreconditionFailed", op="CopyObject", key="k")
        return {"copied": True}

    store.head = head
    return store, now, sent, heads, copy


def test_a_refused_condition_on_a_matching_multipart_etag_turns_into_a_head():
    store, now, sent, heads, copy = make('"abc-2"', refuses_multipart=True)
    assert trio.run(store._copy_if, "CopyObject", "k", '"abc-2"', copy) == {"copied": True}
    assert sent == ['"abc-2"', None] and heads == ["k"]
    assert store.copy_if_match_multipart is False
    sent.clear()
    heads.clear()
    assert trio.run(store._copy_if, "CopyObject", "k", 'abc-2', copy) == {"copied": True}
    assert sent == [None] and heads == ["k"], "no refused request any more: a HEAD first"
    now["etag"] = '"def-3"'                      # another client replaced it
    sent.clear()
    with pytest.raises(PreconditionFailed):
        trio.run(store._copy_if, "CopyObject", "k", '"abc-2"', copy)
    assert sent == [], "nothing copied"


def test_a_condition_that_really_failed_stays_failed():
    store, now, sent, heads, copy = make('"new-2"', refuses_multipart=False)
    with pytest.raises(PreconditionFailed):
        trio.run(store._copy_if, "CopyObject", "k", '"old-2"', copy)
    assert store.copy_if_match_multipart is True, "the HEAD agreed with the refusal"
    store, now, sent, heads, copy = make('"new"', refuses_multipart=False)
    with pytest.raises(PreconditionFailed):
        trio.run(store._copy_if, "CopyObject", "k", '"old"', copy)
    assert heads == [], "a single-part ETag's refusal is believed"
    store, now, sent, heads, copy = make('"abc-2"', refuses_multipart=False)
    assert trio.run(store._copy_if, "CopyObject", "k", '"abc-2"', copy) == {"copied": True}
    assert sent == ['"abc-2"'] and heads == [], "a server that honours it: one request"
