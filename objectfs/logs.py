"""Where the daemon's log goes, and what may never appear in it.

Destination: ``log_file`` if set (reopened when logrotate moves it);
otherwise stderr in the foreground and syslog as a daemon (the journal
reads /dev/log, so ``journalctl -t objectfs`` shows it).  A daemon on a
machine without /dev/log and without ``log_file`` has nowhere to log; the
CLI says so once the daemon is up (``no_log_warning``).

Secrets: botocore logs whole requests (headers with the Authorization
signature, presigned query strings, session tokens) at DEBUG, so its
loggers, urllib3's and s3transfer's are held at INFO whatever ``log_level``
says.  As a second line of defence every handler carries ``Redactor``,
which rewrites each record (message, arguments, traceback) before it is
formatted: the signing fields of SigV4/SigV2 query strings and headers,
SSE-C keys, and the literal values of the credentials and keys the daemon
uses (registered with ``add_secret``) are replaced by ``[REDACTED]``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading
import time

REDACTED = "[REDACTED]"

# Query-string and header fields that carry signatures, credentials or keys.
# Each pattern keeps the field name and replaces its value.
_PATTERNS = [
    # presigned URLs: X-Amz-Signature=..., X-Amz-Credential=..., X-Amz-Security-Token=...
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\",]+"),
    # SigV2 query strings, and the Signature= part of an Authorization value
    re.compile(r"(?i)((?:[?&,\s]|^)(?:Signature|AWSAccessKeyId|SecurityToken)=)[^&\s'\",]+"),
    # an Authorization header (its value holds commas): up to the end of the value
    re.compile(r"(?i)(Authorization['\"]?\s*[:=]\s*b?['\"]?)[^'\"\r\n}]+"),
    re.compile(r"(AWS4-HMAC-SHA256\s+)[^'\"\r\n}]+"),
    # other headers and settings as "name: value", "name=value" or a dict repr
    re.compile(r"(?i)((?:X-Amz-Security-Token|"
               r"X-Amz-(?:copy-source-)?server-side-encryption-customer-key|"
               r"(?:CopySource)?SSECustomerKey|"
               r"aws_secret_access_key|aws_session_token|SecretAccessKey|SessionToken)"
               r"['\"]?\s*[:=]\s*b?['\"]?)[^'\"\r\n,}&\s]+"),
]

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
# Shorter values would redact ordinary words; real secrets are longer.
MIN_SECRET_LENGTH = 8


def add_secret(value: str | bytes | None) -> None:
    """Never log ``value`` (a secret key, session token or SSE-C key)."""
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    for p in _PATTERNS:
        text = p.sub(lambda m: m.group(1) + REDACTED, text)
    for s in sorted(_secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class Redactor(logging.Filter):
    """Rewrites a record so that no secret survives formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log it as it is, redacted
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RequestGone(logging.Filter):
    """pyfuse3 logs an ERROR when a reply finds no request to answer
    (``fuse_reply_*`` failing with ENOENT): the kernel no longer waits for
    it, as when the caller was interrupted or went away.  Nothing failed in
    the daemon and no caller missed an answer, so it is a DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and \
                "fuse_reply_* failed with No such file or directory" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


# Loggers that print request details (and so signatures) below INFO.
CHATTY = ("botocore", "boto3", "urllib3", "s3transfer")
SYSLOG_SOCKET = "/dev/log"


def no_log_warning(cfg) -> str | None:
    """What to tell the user if a daemon's log would be lost."""
    if cfg.log_file or os.path.exists(SYSLOG_SOCKET):
        return None
    return (f"no syslog here ({SYSLOG_SOCKET} is missing): the daemon's log is discarded; "
            "use -o log_file=PATH or -f")


def setup(cfg, daemon: bool) -> None:
    """Send our log where ``cfg`` and the run mode say, at ``cfg.log_level``."""
    level = getattr(logging, cfg.log_level.upper())
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if cfg.log_file:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(cfg.log_file)
    elif daemon and os.path.exists(SYSLOG_SOCKET):
        handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        # "ident[pid]: " is what syslog and journald read as the program name
        fmt = "objectfs[%(process)d]: %(levelname)s %(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(Redactor())
    root.addHandler(handler)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    fuse_log = logging.getLogger("pyfuse3")
    if not any(isinstance(f, RequestGone) for f in fuse_log.filters):
        fuse_log.addFilter(RequestGone())


class Sparse:
    """A warning that can recur many times a second (a full disk refusing
    every block the local tier stores) logged at most once per ``every``
    seconds; the next line says how many were left out.  Thread-safe: the
    tier logs from worker threads."""

    def __init__(self, logger: logging.Logger, every: float = 60.0):
        self.logger, self.every = logger, every
        self._lock = threading.Lock()
        self._last: float | None = None
        self._left_out = 0

    def warning(self, msg: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.every:
                self._left_out += 1
                return
            left_out, self._left_out, self._last = self._left_out, 0, now
        if left_out:
            msg += " (and %d more like it in the last %d s)"
            args = (*args, left_out, int(self.every))
        self.logger.warning(msg, *args)
