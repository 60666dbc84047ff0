"""``objectfs uploads``: list, and optionally abort, unfinished multipart uploads.

A multipart upload that ObjectFS starts is completed or aborted by the
daemon, also when a write fails.  Only a daemon that is killed (SIGKILL,
power loss) leaves one behind: its parts stay in the bucket, invisible and
billed, until someone aborts them.  This command finds them under a bucket
or prefix; ``--abort`` removes those older than ``--older-than`` seconds
(default one hour, so uploads that running writers have under way are
spared; servers that do not report when an upload began, such as moto,
count as old).  A bucket lifecycle rule AbortIncompleteMultipartUpload does
the same on AWS without this command.
"""

from __future__ import annotations

import datetime as dt
import logging

import trio

from .config import ConfigError, parse_endpoint, parse_region, parse_seconds
from .errors import StoreError, UserError
from .store.s3 import S3Settings, S3Store

DEFAULT_OLDER_THAN = 3600.0


def add_parser(sub) -> None:
    u = sub.add_parser("uploads", help="list or abort unfinished multipart uploads",
                       description=__doc__.split("\n\n")[1])
    u.add_argument("source", metavar="s3://BUCKET[/PREFIX]")
    u.add_argument("--endpoint-url", help="S3 endpoint; path-style addressing is used")
    u.add_argument("--region", help="region for request signing")
    u.add_argument("--profile", help="AWS profile for credentials")
    u.add_argument("--passwd-file", metavar="FILE",
                   help="s3fs passwd file with the key pair (as the mount's -o passwd_file; "
                        "~/.passwd-s3fs and /etc/passwd-s3fs are read as the mount reads them)")
    u.add_argument("--abort", action="store_true", help="abort the uploads listed")
    u.add_argument("--older-than", default=None, metavar="SECONDS",
                   help="only uploads begun at least this long ago "
                        f"(default {DEFAULT_OLDER_THAN:.0f} with --abort, else 0)")


def run(args, bucket: str, prefix: str) -> int:
    try:
        older = parse_seconds(args.older_than) if args.older_than is not None else (
            DEFAULT_OLDER_THAN if args.abort else 0.0)
    except ValueError as e:
        raise ConfigError(f"bad value for --older-than: {args.older_than!r}: {e}") from None
    if args.endpoint_url is not None:
        try:
            parse_endpoint(args.endpoint_url)
        except ValueError as e:
            raise ConfigError(f"bad value for --endpoint-url: {args.endpoint_url!r}: {e}") from None
    if args.region is not None:
        try:
            parse_region(args.region)
        except ValueError as e:
            raise ConfigError(f"bad value for --region: {args.region!r}: {e}") from None
    # The store's warnings would reach stderr through logging's last resort,
    # a second line beside the one below: the error says what failed.
    logging.getLogger("objectfs").addHandler(logging.NullHandler())
    # Bounded like the bucket check of a mount: an endpoint that accepts
    # and never answers fails in seconds, not after 5 x read_timeout.
    from .mount import (CHECK_ATTEMPTS, CHECK_CONNECT_TIMEOUT, CHECK_READ_TIMEOUT,
                        with_passwd_credentials)

    store = S3Store(with_passwd_credentials(
        S3Settings(bucket=bucket, endpoint_url=args.endpoint_url, region=args.region,
                   profile=args.profile, connect_timeout=CHECK_CONNECT_TIMEOUT,
                   read_timeout=CHECK_READ_TIMEOUT, max_attempts=CHECK_ATTEMPTS),
        args.passwd_file))
    key_prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    now = dt.datetime.now(dt.timezone.utc)

    async def main() -> int:
        n = 0
        for key, upload_id, began in await store.pending_uploads(key_prefix):
            if began is not None and (now - began).total_seconds() < older:
                continue
            when = began.isoformat(timespec="seconds") if began else "unknown"
            if args.abort:
                await store.abort_multipart(key, upload_id)
                print(f"aborted\t{key}\t{when}\t{upload_id}")
            else:
                print(f"{key}\t{when}\t{upload_id}")
            n += 1
        return n

    try:
        trio.run(main)
    except StoreError as e:
        raise UserError(f"cannot list multipart uploads of {bucket!r}: {e.code}") from None
    return 0
