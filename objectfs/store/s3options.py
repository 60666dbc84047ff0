"""Per-request S3 parameters the mount adds to every call that takes them.

Encryption (SSE-S3, SSE-KMS, SSE-C), storage class and requester-pays are
settings of the mount, not of a call site, so they are added in one place:
a botocore ``before-parameter-build`` hook that, for each operation, adds
exactly the parameters that operation's input shape has.  The S3 model
then decides what goes where, and no call in ``s3.py`` can forget one:

* ``ServerSideEncryption``/``SSEKMSKeyId``/``StorageClass``: the writes
  that create an object (PutObject, CreateMultipartUpload, CopyObject).
* ``SSECustomer*`` (the SSE-C key): every request that reads or writes the
  bytes or headers of an object (HeadObject, GetObject, PutObject,
  CreateMultipartUpload, UploadPart, UploadPartCopy,
  CompleteMultipartUpload, CopyObject); ``CopySourceSSECustomer*`` for the
  source of CopyObject and UploadPartCopy, which is ours and so carries the
  same key.
* ``RequestPayer=requester``: every operation that has it.

The SSE-C key is sent base64-encoded with its MD5, as S3 requires; both
are registered with the log redactor.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

SSE_C_KEY_BYTES = 32  # AES-256


def read_sse_c_key(path: str) -> bytes:
    """The 32-byte SSE-C key in ``path``: raw, or base64 text.

    Refused (ConfigError: exit 2) if the file is readable or writable by
    group or others, as ssh refuses a private key file.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"cannot read sse_c_key_file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"sse_c_key_file {path} is accessible by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        try:
            data = os.read(fd, 4096)
        except OSError as e:   # a directory: EISDIR
            raise ConfigError(f"cannot read sse_c_key_file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) == SSE_C_KEY_BYTES:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != SSE_C_KEY_BYTES:
        raise ConfigError(f"sse_c_key_file {path} must hold a 32-byte key, raw or base64")
    return key


@dataclass(frozen=True)
class RequestOptions:
    sse: str | None = None                  # "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    sse_c_key: bytes | None = field(default=None, repr=False)
    storage_class: str | None = None
    requester_pays: bool = False

    def params(self) -> dict[str, Any]:
        """Every parameter this mount adds, by boto3 parameter name."""
        p: dict[str, Any] = {}
        if self.sse:
            p["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            p["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.sse_c_key is not None:
            key = base64.b64encode(self.sse_c_key).decode()
            md5 = base64.b64encode(hashlib.md5(self.sse_c_key).digest()).decode()
            for prefix in ("SSECustomer", "CopySourceSSECustomer"):
                p[prefix + "Algorithm"] = "AES256"
                p[prefix + "Key"] = key
                p[prefix + "KeyMD5"] = md5
        if self.storage_class:
            p["StorageClass"] = self.storage_class
        if self.requester_pays:
            p["RequestPayer"] = "requester"
        return p

    def secrets(self) -> list[str]:
        """Values that must never be logged."""
        p = self.params()
        return [p[k] for k in ("SSECustomerKey",) if k in p]

    def install(self, client) -> None:
        """Add our parameters to every request ``client`` builds."""
        extra = self.params()
        if not extra:
            return

        def add(params: dict, model, **_) -> None:
            members = model.input_shape.members if model.input_shape is not None else {}
            for name, value in extra.items():
                if name in members:
                    params[name] = value  # the mount's setting wins over a preserved header

        for op in client.meta.service_model.operation_names:
            client.meta.events.register(f"before-parameter-build.s3.{op}", add)
