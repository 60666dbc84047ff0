"""Credentials in s3fs's passwd-file format, for people coming from s3fs.

boto3's chain (environment, shared config and credentials files with their
profiles, SSO, assume-role, container and instance roles) stays the main
source.  This module only adds what s3fs users already have, in this order:

1. ``-o passwd_file=FILE`` (explicit: wins over boto3's chain; cannot be
   combined with ``--profile``);
2. ``--profile`` or ``AWS_ACCESS_KEY_ID`` in the environment: boto3's chain,
   nothing from here;
3. ``AWSACCESSKEYID`` and ``AWSSECRETACCESSKEY`` (s3fs's variables);
4. ``~/.passwd-s3fs``, then ``/etc/passwd-s3fs``, but only when boto3's chain
   finds no credentials at all, so an existing AWS configuration is never
   overridden by an old s3fs file.

A passwd file holds ``ACCESS:SECRET`` (the default pair) or
``BUCKET:ACCESS:SECRET`` lines; ``#`` comments and blank lines are ignored; a
line for the mounted bucket wins over the default pair.  Like s3fs, a file
readable by group or others is refused.  Secrets never appear in messages.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .errors import ConfigError

DEFAULT_FILES = ("~/.passwd-s3fs", "/etc/passwd-s3fs")


@dataclass(frozen=True)
class KeyPair:
    access_key: str
    secret_key: str = field(repr=False)
    source: str = ""  # where it came from, for log lines


def parse_passwd(text: str, bucket: str, path: str) -> KeyPair | None:
    """The key pair for ``bucket`` in s3fs passwd-file text (None if none fits)."""
    default: KeyPair | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) == 2:
            name, (access, secret) = None, fields
        elif len(fields) == 3:
            name, access, secret = fields
        else:
            raise ConfigError(f"passwd file {path} line {n}: expected ACCESS:SECRET or "
                              "BUCKET:ACCESS:SECRET")
        access, secret = access.strip(), secret.strip()
        if not access or not secret:
            raise ConfigError(f"passwd file {path} line {n}: empty access key or secret")
        pair = KeyPair(access, secret, path)
        if name is None:
            if default is not None:
                raise ConfigError(f"passwd file {path}: more than one ACCESS:SECRET line "
                                  "without a bucket")
            default = pair
        elif name.strip() == bucket:
            return pair
    return default


def read_passwd(path: str, bucket: str) -> KeyPair:
    """Read ``path`` (refused if group/other-readable); ConfigError if unusable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"cannot read passwd file {path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"passwd file {path} is accessible by group or others "
                              f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
    except OSError as e:   # a directory: EISDIR
        raise ConfigError(f"cannot read passwd file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeError:
        raise ConfigError(f"passwd file {path}: not UTF-8 text") from None
    pair = parse_passwd(text, bucket, path)
    if pair is None:
        raise ConfigError(f"passwd file {path} has no key pair for bucket {bucket!r}")
    return pair


def resolve(bucket: str, passwd_file: str | None, profile: str | None,
            chain_has_credentials: Callable[[], bool],
            env: Mapping[str, str] | None = None) -> KeyPair | None:
    """Credentials to use instead of boto3's chain, or None to use the chain.

    ``chain_has_credentials`` is asked only when a default passwd file
    exists (it may cost an instance-metadata request)."""
    env = os.environ if env is None else env
    if passwd_file:
        if profile:
            raise ConfigError("passwd_file and --profile cannot be used together")
        return read_passwd(os.path.expanduser(passwd_file), bucket)
    if profile or env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE"):
        return None
    if env.get("AWSACCESSKEYID") and env.get("AWSSECRETACCESSKEY"):
        return KeyPair(env["AWSACCESSKEYID"], env["AWSSECRETACCESSKEY"],
                       "$AWSACCESSKEYID")
    for path in DEFAULT_FILES:
        path = os.path.expanduser(path)
        if os.path.exists(path):
            if chain_has_credentials():
                return None
            return read_passwd(path, bucket)
    return None
