"""Error classes and the one table from object-store errors to errno.

Every error the filesystem core raises on purpose is an ``FsError`` carrying
the errno the caller sees and the level at which it is logged.  Store errors
(``StoreError``) are ``FsError`` too: their errno comes from ``S3_ERRNO``, the
single mapping from S3 error codes to errno, so no other module translates
S3 errors.  The FUSE adapter's guard turns any ``FsError`` into
``FUSEError(errno)`` and anything else into EIO with a logged traceback.

User-facing failures of the command line (bad options, an unreachable
endpoint, a missing bucket) are ``UserError``: one line of text and an exit
code, printed once by the CLI.
"""

from __future__ import annotations

import errno as _errno
import logging


class FsError(Exception):
    """A filesystem operation failed with a definite errno."""

    errno: int = _errno.EIO
    log_level: int = logging.DEBUG

    def __init__(self, message: str = "", *, errno: int | None = None):
        super().__init__(message or _errno.errorcode.get(errno or self.errno, "error"))
        if errno is not None:
            self.errno = errno


def _cls(name: str, code: int, level: int = logging.DEBUG, doc: str = "") -> type[FsError]:
    return type(name, (FsError,), {"errno": code, "log_level": level, "__doc__": doc})


NotFound = _cls("NotFound", _errno.ENOENT, doc="No such file or directory.")
Exists = _cls("Exists", _errno.EEXIST, doc="The name is taken.")
NotEmpty = _cls("NotEmpty", _errno.ENOTEMPTY, doc="Directory not empty.")
NotADirectory = _cls("NotADirectory", _errno.ENOTDIR, doc="A path component is not a directory.")
IsADirectory = _cls("IsADirectory", _errno.EISDIR, doc="The operation needs a non-directory.")
InvalidArgument = _cls("InvalidArgument", _errno.EINVAL, doc="Bad argument (e.g. a directory into its own subtree).")
NameTooLong = _cls("NameTooLong", _errno.ENAMETOOLONG, doc="A name over 255 bytes or a key over 1024 bytes.")
NotSupported = _cls("NotSupported", _errno.EOPNOTSUPP, doc="S3 cannot represent this (hard links, ...).")
PermissionDenied = _cls("PermissionDenied", _errno.EACCES, doc="Access refused.")
NotPermitted = _cls("NotPermitted", _errno.EPERM, doc="Operation not permitted.")
Stale = _cls("Stale", _errno.ESTALE, logging.INFO, doc="The object changed in S3 under an open handle.")
ReadOnly = _cls("ReadOnly", _errno.EROFS, doc="Mounted read-only.")
NoSpace = _cls("NoSpace", _errno.ENOSPC, logging.WARNING, doc="Local staging or metadata space exhausted.")
TooBig = _cls("TooBig", _errno.E2BIG, doc="Metadata (xattrs) over S3's 2 KB limit.")
NoData = _cls("NoData", _errno.ENODATA, doc="No such extended attribute.")
RangeError = _cls("RangeError", _errno.ERANGE, doc="Buffer too small.")
FileTooBig = _cls("FileTooBig", _errno.EFBIG, doc="Over S3's 5 TiB object limit.")
BadHandle = _cls("BadHandle", _errno.EBADF, doc="Unknown or closed file handle.")
IOFailure = _cls("IOFailure", _errno.EIO, logging.WARNING, doc="An upload or download failed.")


# One table: S3 error code (or bare HTTP status, which is what HEAD errors
# carry since they have no body) -> errno.  Anything not listed is EIO.
S3_ERRNO: dict[str, int] = {
    "NoSuchKey": _errno.ENOENT,
    "NotFound": _errno.ENOENT,
    "404": _errno.ENOENT,
    "NoSuchBucket": _errno.ENOENT,
    "AccessDenied": _errno.EACCES,
    "403": _errno.EACCES,
    "Forbidden": _errno.EACCES,
    "AllAccessDisabled": _errno.EACCES,
    "InvalidAccessKeyId": _errno.EACCES,
    "SignatureDoesNotMatch": _errno.EACCES,
    "ExpiredToken": _errno.EACCES,
    "InvalidToken": _errno.EACCES,
    "AccountProblem": _errno.EACCES,
    # botocore could not get credentials (assume-role, SSO, web identity)
    "CredentialError": _errno.EACCES,
    # If-Match / If-None-Match failed: the object is not the one we pinned.
    "PreconditionFailed": _errno.ESTALE,
    "412": _errno.ESTALE,
    "InvalidRange": _errno.EINVAL,
    "416": _errno.EINVAL,
    "KeyTooLongError": _errno.ENAMETOOLONG,
    "MetadataTooLarge": _errno.E2BIG,
    "EntityTooLarge": _errno.EFBIG,
    "QuotaExceeded": _errno.EDQUOT,
    "InvalidObjectState": _errno.EIO,  # archived (Glacier) object
    "NotImplemented": _errno.EOPNOTSUPP,
    "501": _errno.EOPNOTSUPP,
    # still throttled after every retry: the operation failed (EIO); EAGAIN
    # from read(2) or close(2) of a regular file would only confuse programs
    "SlowDown": _errno.EIO,
    "503": _errno.EIO,
    "RequestTimeout": _errno.ETIMEDOUT,
}


class StoreError(FsError):
    """An object-store request failed.

    ``code`` is the S3 error code (or HTTP status as a string); ``op`` and
    ``key`` say what was asked.  Never carries credentials or signed URLs.
    """

    log_level = logging.WARNING
    # seconds from the server's Retry-After header, when it sent one
    retry_after: float | None = None

    def __init__(self, code: str, message: str = "", *, op: str = "", key: str = "",
                 status: int | None = None):
        self.code = code
        self.op = op
        self.key = key
        self.status = status
        super().__init__(f"{op} {key!r}: {code} {message}".strip(),
                         errno=S3_ERRNO.get(code, _errno.EIO))


class ObjectNotFound(StoreError, NotFound):
    """The key (or bucket) does not exist (also a NotFound)."""

    log_level = logging.DEBUG


class PreconditionFailed(StoreError):
    """If-Match / If-None-Match did not hold."""

    log_level = logging.INFO


class StoreUnavailable(StoreError):
    """The endpoint could not be reached or did not answer in time."""


def store_error(code: str, message: str = "", **kw) -> StoreError:
    """Build the most specific StoreError subclass for an S3 error code."""
    if S3_ERRNO.get(code) == _errno.ENOENT:
        return ObjectNotFound(code, message, **kw)
    if code in ("PreconditionFailed", "412"):
        return PreconditionFailed(code, message, **kw)
    return StoreError(code, message, **kw)


# Store errors that tell a writer something useful keep their errno when an
# upload fails (ESTALE: the version the file was opened from is no longer
# the one in S3); anything else (a missing bucket, a server error) is EIO.
_UPLOAD_ERRNOS = frozenset({_errno.EACCES, _errno.EPERM, _errno.EDQUOT, _errno.ENOSPC,
                            _errno.EFBIG, _errno.ENAMETOOLONG, _errno.EROFS, _errno.E2BIG,
                            _errno.ESTALE})


def upload_error(err: BaseException, what: str) -> FsError:
    """The error a failed upload reports to close/fsync."""
    if isinstance(err, FsError) and (err.errno in _UPLOAD_ERRNOS or err.errno == _errno.EIO):
        return err
    return IOFailure(f"{what} failed: {err}")


class UserError(Exception):
    """A failure to report to the user as one line, with an exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(UserError):
    """A bad option, value or config file: exit code 2."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)
