"""Errors in one place: every error class's errno, the S3 table, and the FUSE guard."""

from __future__ import annotations

import errno
import inspect
import logging
import stat
from types import SimpleNamespace

import pytest
import trio

import objectfs.errors as E
from objectfs.errors import (S3_ERRNO, ConfigError, FsError, ObjectNotFound, PreconditionFailed,
                             StoreError, UserError, store_error)

# Every FsError subclass the module defines, with the errno its callers see.
EXPECTED = {
    "FsError": errno.EIO,
    "NotFound": errno.ENOENT,
    "Exists": errno.EEXIST,
    "NotEmpty": errno.ENOTEMPTY,
    "NotADirectory": errno.ENOTDIR,
    "IsADirectory": errno.EISDIR,
    "InvalidArgument": errno.EINVAL,
    "NameTooLong": errno.ENAMETOOLONG,
    "NotSupported": errno.EOPNOTSUPP,
    "PermissionDenied": errno.EACCES,
    "NotPermitted": errno.EPERM,
    "Stale": errno.ESTALE,
    "ReadOnly": errno.EROFS,
    "NoSpace": errno.ENOSPC,
    "TooBig": errno.E2BIG,
    "NoData": errno.ENODATA,
    "RangeError": errno.ERANGE,
    "FileTooBig": errno.EFBIG,
    "BadHandle": errno.EBADF,
    "IOFailure": errno.EIO,
    # store errors: the errno of the code each one is made for
    "StoreError": errno.EIO,
    "ObjectNotFound": errno.ENOENT,
    "PreconditionFailed": errno.ESTALE,
    "StoreUnavailable": errno.EIO,
}
# The S3 error code each StoreError subclass stands for.
STORE_CODES = {"StoreError": "InternalError", "ObjectNotFound": "NoSuchKey",
               "PreconditionFailed": "PreconditionFailed", "StoreUnavailable": "ConnectTimeout"}


def all_fs_error_classes() -> list[type]:
    return [obj for _, obj in inspect.getmembers(E, inspect.isclass)
            if issubclass(obj, FsError) and obj.__module__ == E.__name__]


def make(cls: type) -> FsError:
    if issubclass(cls, StoreError):
        return cls(STORE_CODES[cls.__name__], op="Op", key="k")
    return cls()


def test_every_error_class_is_in_the_table():
    names = {c.__name__ for c in all_fs_error_classes()}
    assert names == set(EXPECTED), (
        "an error class was added or removed: give it its errno in EXPECTED")


@pytest.mark.parametrize("cls", all_fs_error_classes(), ids=lambda c: c.__name__)
def test_each_error_class_errno(cls):
    err = make(cls)
    assert err.errno == EXPECTED[cls.__name__]
    assert err.errno in errno.errorcode
    assert isinstance(err.log_level, int)
    assert str(err), "every error has a message"
    if not issubclass(cls, StoreError):
        # the class attribute is what an error raised without arguments carries
        assert cls.errno == EXPECTED[cls.__name__]
        assert str(cls()) == errno.errorcode[cls.errno]


def test_errno_can_be_overridden_per_instance():
    err = E.TooBig("xattrs", errno=errno.ENOSPC)
    assert err.errno == errno.ENOSPC
    assert E.TooBig.errno == errno.E2BIG and E.TooBig().errno == errno.E2BIG


def test_log_levels_of_expected_conditions():
    assert E.NotFound.log_level == logging.DEBUG
    assert E.Stale.log_level == logging.INFO
    assert E.NoSpace.log_level == logging.WARNING
    assert E.IOFailure.log_level == logging.WARNING
    assert ObjectNotFound.log_level == logging.DEBUG


@pytest.mark.parametrize("code, expected", [
    ("NoSuchKey", errno.ENOENT), ("NotFound", errno.ENOENT), ("404", errno.ENOENT),
    ("NoSuchBucket", errno.ENOENT),
    ("AccessDenied", errno.EACCES), ("403", errno.EACCES), ("InvalidAccessKeyId", errno.EACCES),
    ("SignatureDoesNotMatch", errno.EACCES), ("ExpiredToken", errno.EACCES),
    ("PreconditionFailed", errno.ESTALE), ("412", errno.ESTALE),
    ("InvalidRange", errno.EINVAL), ("KeyTooLongError", errno.ENAMETOOLONG),
    ("MetadataTooLarge", errno.E2BIG), ("EntityTooLarge", errno.EFBIG),
    ("NotImplemented", errno.EOPNOTSUPP), ("SlowDown", errno.EIO),
    ("RequestTimeout", errno.ETIMEDOUT), ("InvalidObjectState", errno.EIO),
])
def test_s3_errno_table(code, expected):
    assert S3_ERRNO[code] == expected
    assert store_error(code, op="Op", key="k").errno == expected


@pytest.mark.parametrize("code", ["InternalError", "NoSuchUpload", "EntityTooSmall", "500",
                                  "SomethingNew", ""])
def test_unlisted_codes_are_eio(code):
    err = store_error(code, op="Op", key="k")
    assert type(err) is StoreError
    assert err.errno == errno.EIO


@pytest.mark.parametrize("code", sorted(c for c, e in S3_ERRNO.items() if e == errno.ENOENT))
def test_store_error_for_enoent_codes_is_object_not_found(code):
    err = store_error(code, "gone", op="GetObject", key="a/b")
    assert isinstance(err, ObjectNotFound)
    assert isinstance(err, E.NotFound)  # so `except NotFound` catches missing objects
    assert isinstance(err, StoreError)
    assert err.errno == errno.ENOENT
    assert (err.code, err.op, err.key) == (code, "GetObject", "a/b")
    assert "a/b" in str(err) and code in str(err)


@pytest.mark.parametrize("code", ["PreconditionFailed", "412"])
def test_store_error_for_precondition_codes(code):
    err = store_error(code, op="GetObject", key="k")
    assert isinstance(err, PreconditionFailed)
    assert not isinstance(err, E.NotFound)
    assert err.errno == errno.ESTALE


def test_every_table_entry_is_a_real_errno():
    for code, e in S3_ERRNO.items():
        assert e in errno.errorcode, code


def test_user_errors_carry_exit_codes():
    assert UserError("x").exit_code == 1
    assert UserError("x", exit_code=3).exit_code == 3
    err = ConfigError("bad")
    assert err.exit_code == 2 and str(err) == "bad"
    assert not isinstance(err, FsError)


# -- the FUSE adapter's guard -------------------------------------------------------

pyfuse3 = pytest.importorskip("pyfuse3")
from objectfs import fuse_adapter  # noqa: E402
from objectfs.fuse_adapter import HANDLERS, FuseOperations  # noqa: E402
from objectfs.namespace.tree import Attr  # noqa: E402


class StubFs:
    """Every filesystem method raises ``exc`` (or returns ``result``)."""

    def __init__(self, exc: BaseException | None = None, result=None, negative_ttl=0.0):
        self.cfg = SimpleNamespace(metadata_ttl=1.0, negative_ttl=negative_ttl)
        self.exc = exc
        self.result = result
        self.calls: list[str] = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def method(*args):
            self.calls.append(name)
            if self.exc is not None:
                raise self.exc  # raised at call time: works for sync and async callers
            return _value(self.result)

        return method


async def _value(v):
    return v


def handler_args(name: str) -> tuple:
    """Plausible arguments for handler ``name`` (the stub ignores them)."""
    fn = inspect.unwrap(getattr(FuseOperations, name))
    params = list(inspect.signature(fn).parameters)[1:]
    args = []
    for p in params:
        if p == "attr":
            args.append(SimpleNamespace(st_mode=0, st_uid=0, st_gid=0, st_size=0,
                                        st_atime_ns=0, st_mtime_ns=0))
        elif p == "fields":
            args.append(SimpleNamespace(update_mode=False, update_uid=False, update_gid=False,
                                        update_size=False, update_atime=False,
                                        update_mtime=False))
        elif p == "ctx":
            args.append(SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022))
        elif p in ("name", "name_old", "name_new", "new_name", "target", "buf", "value"):
            args.append(b"x")
        else:
            args.append(1)
    return tuple(args)


# fsyncdir does nothing with the filesystem, so it cannot fail
CALLING_HANDLERS = [h for h in HANDLERS if h != "fsyncdir"]


def call(ops: FuseOperations, name: str):
    async def main():
        return await getattr(ops, name)(*handler_args(name))
    return trio.run(main)


def test_every_handler_is_guarded():
    for name in HANDLERS:
        fn = getattr(FuseOperations, name)
        assert fn.__wrapped__ is not None, name


@pytest.mark.parametrize("name", CALLING_HANDLERS)
@pytest.mark.parametrize("exc", [E.NotEmpty("x"), E.Stale(), E.NameTooLong(),
                                 store_error("AccessDenied", op="HeadObject", key="k"),
                                 E.IOFailure("upload failed")],
                         ids=lambda e: type(e).__name__)
def test_fs_error_becomes_fuse_error_with_its_errno(name, exc, caplog):
    ops = FuseOperations(StubFs(exc))
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(ops, name)
    assert ei.value.errno == exc.errno
    assert not any(r.exc_info for r in caplog.records), "expected errors log no traceback"


@pytest.mark.parametrize("name", CALLING_HANDLERS)
def test_unexpected_exception_becomes_eio_with_logged_traceback(name, caplog):
    caplog.set_level(logging.ERROR, logger=fuse_adapter.__name__)
    ops = FuseOperations(StubFs(RuntimeError("boom")))
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(ops, name)
    assert ei.value.errno == errno.EIO
    recs = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(recs) == 1, "one traceback per unexpected failure"
    assert recs[0].exc_info[0] is RuntimeError
    assert name in recs[0].getMessage()


@pytest.mark.parametrize("name", CALLING_HANDLERS)
def test_fuse_error_passes_through_unchanged(name):
    ops = FuseOperations(StubFs(pyfuse3.FUSEError(errno.EXDEV)))
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(ops, name)
    assert ei.value.errno == errno.EXDEV


def test_base_exceptions_pass_through():
    """Cancellation (a BaseException) must not be turned into EIO."""
    ops = FuseOperations(StubFs(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        call(ops, "unlink")


@pytest.mark.parametrize("name, result", [
    ("unlink", None), ("rmdir", None), ("rename", None), ("flush", None), ("fsync", None),
    ("release", None), ("setxattr", None), ("removexattr", None),
    ("readlink", b"target"), ("read", b"data"), ("write", 4), ("getxattr", b"v"),
    ("listxattr", [b"user.a"])])
def test_normal_returns_pass_through(name, result, caplog):
    fs = StubFs(result=result)
    ops = FuseOperations(fs)
    assert call(ops, name) == result
    assert fs.calls == [name]
    assert not caplog.records


def test_successful_getattr_builds_entry_attributes():
    attr = Attr(mode=stat.S_IFREG | 0o640, uid=5, gid=6, size=1000, mtime_ns=1, ctime_ns=2,
                atime_ns=3)
    node = SimpleNamespace(ino=42, is_dir=False)

    class Fs(StubFs):
        def visible_attr(self, n):
            return attr

        def nlink(self, n):
            return 1

        def attr_pending(self, n):
            return pending

        def fresh_for(self, n):
            return 1.0

    pending = False
    ops = FuseOperations(Fs(result=node))
    e = call(ops, "getattr")
    assert e.st_ino == 42
    assert e.st_mode == stat.S_IFREG | 0o640
    assert (e.st_uid, e.st_gid, e.st_size) == (5, 6, 1000)
    assert e.st_blocks == 2
    assert e.attr_timeout == 1.0 and e.entry_timeout == 1.0
    # the listing's attributes while the entry's HEAD is under way: not kept
    pending = True
    e = call(ops, "getattr")
    assert e.attr_timeout == 0 and e.entry_timeout == 1.0


def test_lookup_miss_is_a_cached_negative_entry_when_negative_ttl_is_set():
    class Fs(StubFs):
        def missing_for(self, parent, name):
            return 6.5   # what is left of the miss's time (Namespace.missing_for)

    ops = FuseOperations(Fs(E.NotFound("x"), negative_ttl=7.0))
    e = call(ops, "lookup")
    assert e.st_ino == 0 and e.entry_timeout == 6.5
    ops = FuseOperations(StubFs(E.NotFound("x"), negative_ttl=0.0))
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(ops, "lookup")
    assert ei.value.errno == errno.ENOENT
    # other errors are never turned into negative entries
    ops = FuseOperations(StubFs(E.PermissionDenied(), negative_ttl=7.0))
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(ops, "lookup")
    assert ei.value.errno == errno.EACCES


def test_forget_never_raises(caplog):
    ops = FuseOperations(StubFs(RuntimeError("boom")))
    trio.run(ops.forget, [(5, 1)])
    assert any(r.exc_info for r in caplog.records)
