"""Mount options: one table of every option with its type, default and meaning.

Sources, later ones winning: built-in defaults, the YAML file (``--config``),
``-o key=value,...`` options, then the explicit command-line flags
(``--endpoint-url`` and friends).  The result is a frozen ``Config``.  Any
unknown option or bad value raises ``ConfigError`` (one line, exit code 2).
``etc/objectfs.example.yaml`` is generated from this table and checked by a
test, so the documented defaults cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import ConfigError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)


def parse_size(text: str | int) -> int:
    """'8M', '8MiB', '1.5G', '4096' -> bytes (binary multiples)."""
    if isinstance(text, bool):
        raise ValueError("not a size")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("negative size")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r}")
    mult = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on", ""):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_mode(text: str | int) -> int:
    """Octal permission bits: '0644', '644', 0o644 (YAML ints are read as octal digits)."""
    if isinstance(text, bool):
        raise ValueError("not a mode")
    s = str(text).strip()
    if s.startswith("0o"):
        s = s[2:]
    v = int(s, 8)
    if not 0 <= v <= 0o7777:
        raise ValueError(f"mode out of range: {text!r}")
    return v


# The longest timeout taken (a socket refuses timeouts past what its
# clock can hold, and every request then failed).
MAX_TIMEOUT = 86400.0


def env_seconds(name: str, default: float) -> float:
    """Seconds from the environment variable ``name`` (more than 0, less
    than MAX_TIMEOUT), else ``default``."""
    try:
        v = float(os.environ.get(name, default))
    except ValueError:
        return default
    return v if 0 < v < MAX_TIMEOUT else default


def parse_seconds(text: str | float) -> float:
    if isinstance(text, bool):
        raise ValueError("not a duration")
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise ValueError("must be a finite number of seconds, at least 0")
    return v


# Delay of a bare "-o writeback": long enough to coalesce the rewrites of
# an editor's save or a build step, short enough that data is not at risk on
# one disk for long.
WRITEBACK_DEFAULT_DELAY = 5.0


def parse_writeback(text: str | bool | float) -> float | None:
    """'-o writeback' -> the default delay; 'writeback=SECONDS'; false/off -> None."""
    if isinstance(text, bool):
        return WRITEBACK_DEFAULT_DELAY if text else None
    t = str(text).strip().lower()
    if t in ("", "true", "yes", "on"):
        return WRITEBACK_DEFAULT_DELAY
    if t in ("false", "no", "off"):
        return None
    return parse_seconds(t)  # a number is the delay: writeback=0 uploads at once


def parse_timeout(text: str | float) -> float:
    """A network timeout: more than 0, at most MAX_TIMEOUT."""
    v = parse_seconds(text)
    if not 0 < v <= MAX_TIMEOUT:
        raise ValueError(f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    return v


def parse_positive_int(text: str | int) -> int:
    if isinstance(text, bool):
        raise ValueError("not an integer")
    v = int(text)
    if v < 1:
        raise ValueError("must be at least 1")
    return v


def parse_id(text: str | int) -> int:
    if isinstance(text, bool):
        raise ValueError("not an id")
    v = int(text)
    if not 0 <= v < 2 ** 32:
        raise ValueError("out of range")
    return v


def parse_port(text: str | int) -> int:
    if isinstance(text, bool):
        raise ValueError("not a port")
    v = int(text)
    if not 0 <= v <= 65535:
        raise ValueError("must be 0 (off) or a TCP port up to 65535")
    return v


def parse_sse(text) -> str:
    s = str(text).strip()
    if s.upper() == "AES256":
        return "AES256"
    if s.lower() == "aws:kms":
        return "aws:kms"
    raise ValueError("must be AES256 or aws:kms")


def parse_storage_class(text) -> str:
    s = str(text).strip().upper()
    if not s or not all(c.isalnum() or c == "_" for c in s):
        raise ValueError("must be a storage class name such as STANDARD_IA")
    return s


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(text):
        s = str(text).strip().lower()
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return s
    return parse


def parse_globs(text) -> tuple[str, ...]:
    """'a/*:*.db' or a YAML list -> ('a/*', '*.db')."""
    if isinstance(text, bool):
        raise ValueError("needs a value (name=glob:glob)")
    items = text if isinstance(text, (list, tuple)) else str(text).split(":")
    return tuple(str(g).strip().lstrip("/") for g in items if str(g).strip())


def _str(text) -> str:
    if isinstance(text, bool) or str(text) == "":
        raise ValueError("needs a value (name=value)")
    return str(text)


# botocore's rule for a region name (letters, digits and dashes)
_REGION = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


def parse_region(text) -> str:
    s = _str(text).strip()
    if "://" in s:
        raise ValueError("is a region name such as us-east-1, not a URL (endpoint= is s3fs's "
                         "name for the region here; give the URL as --endpoint-url or "
                         "endpoint_url=)")
    if not _REGION.match(s):
        raise ValueError("must be a region name such as us-east-1 (letters, digits, dashes)")
    return s


def parse_endpoint(text) -> str:
    """An S3 endpoint URL: http:// or https://, a host, perhaps a port."""
    from urllib.parse import urlsplit

    s = _str(text).strip()
    u = urlsplit(s)   # ValueError for a malformed address ("http://[::1")
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError("expected http://HOST[:PORT] or https://HOST[:PORT]")
    u.port  # noqa: B018 - ValueError for a port that is not a number in range
    return s


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    group: str
    shown_default: str | None = None   # how the default is written in the docs
    fuse: bool = False                 # passed to the kernel mount as well


OPTIONS: list[Option] = [
    # -- connection
    Option("endpoint_url", parse_endpoint, None, "S3 endpoint URL (AWS when unset). "
           "Path-style addressing is used when it is set.", "connection", "AWS"),
    Option("region", parse_region, None, "Region for request signing (boto3's configuration "
           "when unset, else us-east-1).", "connection", "from boto3"),
    Option("profile", _str, None, "Profile in ~/.aws/config and ~/.aws/credentials.", "connection",
           "boto3 default chain"),
    Option("max_connections", parse_positive_int, 32, "Concurrent S3 requests (connection pool "
           "and worker threads; at most 1024).", "connection"),
    Option("connect_timeout", parse_timeout, 5.0, "Seconds to wait for a TCP connection "
           "(at most 86400).", "connection"),
    Option("read_timeout", parse_timeout, 60.0, "Seconds to wait for response data "
           "(at most 86400).", "connection"),
    Option("retries", parse_positive_int, 5, "Attempts per S3 request (exponential back-off with "
           "jitter on 5xx, throttling, connection errors and damaged bodies; Retry-After is "
           "honoured). See Reliability.", "connection"),
    Option("checksums", _choice("when_required", "when_supported"), "when_required",
           "botocore flexible checksums. 'when_supported' sends CRC trailers (aws-chunked), which "
           "several S3-compatible servers reject; with 'when_required' ObjectFS sends Content-MD5 "
           "itself.", "connection"),
    Option("upload_checksum", _choice("auto", "md5", "none"), "auto",
           "Integrity check of uploads. 'auto': over HTTPS send Content-MD5; over plain HTTP "
           "rely on the SigV4 payload signature (SHA-256) that the server verifies. 'md5': "
           "always send Content-MD5 (about 1.5 s of CPU per GiB). 'none': no Content-MD5 (over HTTP "
           "the payload signature still protects the body).",
           "connection"),
    Option("verify_ssl", parse_bool, True, "Verify TLS certificates.", "connection"),
    Option("no_verify_ssl", parse_bool, False, "Do not verify TLS certificates (same as "
           "verify_ssl=false; a warning is logged). Prefer AWS_CA_BUNDLE=FILE for a private CA.",
           "connection"),
    # -- encryption, storage class, billing
    Option("sse", parse_sse, None, "Server-side encryption of every object "
           "written: AES256 (SSE-S3) or aws:kms (SSE-KMS). Unset: the bucket's default.",
           "encryption", "unset"),
    Option("sse_kms_key_id", _str, None, "KMS key (id, ARN or alias) for sse=aws:kms; implies "
           "it. Unset: the account's default S3 key.", "encryption", "unset"),
    Option("sse_c_key_file", _str, None, "File holding a 32-byte SSE-C key (raw or base64; must "
           "not be readable by group or others). Every object is written and read with it.",
           "encryption", "unset"),
    Option("storage_class", parse_storage_class, None, "Storage class of every object written "
           "(STANDARD_IA, INTELLIGENT_TIERING, ...). Unset: the bucket's default, and a "
           "rewritten object keeps its class.", "encryption", "unset"),
    Option("requester_pays", parse_bool, False, "Send RequestPayer=requester on every request "
           "(buckets where the reader pays).", "encryption"),
    Option("lean_requests", parse_bool, True, "Send HeadObject, GetObject, DeleteObject, "
           "ListObjectsV2, PutObject of up to 256 KiB, CopyObject and a multipart upload's "
           "requests but UploadPart without botocore's per-call work and HTTP session (about "
           "1 ms of CPU less per request, 1.5-2 ms for the PUTs, copies and multipart ones, a "
           "third of it per listing page; signed exactly as botocore "
           "signs them, checked against its signer on each operation's first request; the "
           "client's credentials, timeouts, CA bundle and TLS verification; small requests "
           "sent from the event loop instead of a worker thread; behind a proxy or with a "
           "client certificate, botocore's HTTP session and signer). Off: every request "
           "through boto3. Always off with SSE-C or requester-pays.", "connection"),
    Option("path_style", parse_bool, False, "Address buckets in the URL path "
           "(https://host/bucket/key) instead of the host name; always so with endpoint_url. "
           "s3fs spelling: use_path_request_style.", "connection"),
    Option("passwd_file", _str, None, "s3fs-format credentials file (ACCESS:SECRET or "
           "BUCKET:ACCESS:SECRET lines); must not be readable by group or others. See "
           "README, Credentials.", "connection", "unset"),
    # -- ownership and permissions
    Option("uid", parse_id, None, "Force this owner on every entry (as s3fs/libfuse -o uid). "
           "Unset: the uid stored in the object, else the mounting user.", "permissions",
           "unset"),
    Option("gid", parse_id, None, "Force this group on every entry. Unset: the stored gid, else "
           "the mounting user's group.", "permissions", "unset"),
    Option("umask", parse_mode, None, "Force permission bits 0777 & ~umask on every entry "
           "(as s3fs -o umask).", "permissions", "unset"),
    Option("file_mode", parse_mode, 0o644, "Permission bits of files whose object carries no "
           "mode.", "permissions", "0644"),
    Option("dir_mode", parse_mode, 0o755, "Permission bits of directories with no stored mode "
           "(including prefixes with no marker object).", "permissions", "0755"),
    Option("allow_other", parse_bool, False, "Let other users access the mount (needs root or "
           "user_allow_other in /etc/fuse.conf).", "permissions", fuse=True),
    Option("allow_root", parse_bool, False, "Let root (besides the mounting user) access the "
           "mount; not together with allow_other, which includes root. Needs user_allow_other "
           "in /etc/fuse.conf for users other than root.", "permissions", fuse=True),
    Option("default_permissions", parse_bool, True, "Let the kernel enforce mode bits and "
           "ownership. Off, nothing checks them, so allow_other refuses it.", "permissions",
           fuse=True),
    Option("ro", parse_bool, False, "Mount read-only.", "permissions", fuse=True),
    # -- namespace and metadata
    Option("metadata_ttl", parse_seconds, 5.0, "Seconds that cached attributes, lookups and "
           "directory listings are trusted before S3 is asked again (the kernel keeps entries and "
           "attributes for what is left of it). Changes made by other S3 clients show up after "
           "at most this long; our own changes show at once.", "metadata"),
    Option("negative_ttl", parse_seconds, 5.0, "Seconds a 'no such file' answer is cached.",
           "metadata"),
    Option("stat_concurrency", parse_positive_int, 32, "Parallel HEAD requests that fill in "
           "mode and owner while listing a directory.", "metadata"),
    Option("trust_listing", parse_bool, False, "Show attributes from the listing alone (size, "
           "Last-Modified, default mode and owner) and skip the per-entry HEAD; fast, but modes, "
           "owners, mtimes and symlink types stored in metadata show from a file's first lookup "
           "once its entry is older than metadata_ttl (one HEAD, see SEMANTICS.md).",
           "metadata"),
    Option("small_file_prefetch", parse_size, 16 * KiB, "A file up to this size whose "
           "attributes are fetched (ls -l, stat, a lookup after a listing) is fetched whole with "
           "a GET instead of a HEAD: the same one request, and its first read then needs none. "
           "The bytes are kept in memory (16 MiB at most) only while the object's ETag is the "
           "one they came with; a listing whose small files hold more sends HEADs. 0 turns "
           "this off.", "metadata", "16K"),
    Option("metadata_cache", parse_bool, None, "Keep the attributes that HEADs found on local "
           "disk (meta.db under cache_dir), so a later mount lists an unchanged file with its "
           "mode and owner without a HEAD. A kept entry is used only when the listing shows "
           "the same ETag, size and Last-Modified, and only for objects HEADed 2 s or more "
           "(server clock) after their last change, so any later change shows. Default: on "
           "when the local tier is (cache_size is not 0).", "metadata", "see text"),
    Option("compat_dir", parse_bool, False, "Also read 'name_$folder$' objects as directories "
           "(s3fs compat_dir; old S3 tools).", "metadata"),
    # -- data path
    Option("part_size", parse_size, 24 * MiB, "Multipart part size for uploads (doubles every "
           "900 parts, so any file up to 5 TiB fits; minimum 5M). Files smaller than this go up "
           "in one PutObject at close.", "data", "24M"),
    Option("upload_concurrency", parse_positive_int, 4, "Parts uploaded in parallel per mount. "
           "Raise it for a remote endpoint with high latency and a machine with more cores.",
           "data"),
    Option("write_buffer_memory", parse_size, 256 * MiB, "Bytes of write buffers in memory for "
           "the whole mount; when it is full, files being written move to the staging disk.",
           "data", "256M"),
    Option("read_part_size", parse_size, 16 * MiB, "Size of each ranged GET during sequential "
           "prefetch.", "data", "16M"),
    Option("prefetch_max", parse_size, 64 * MiB, "Largest read-ahead window per open file.",
           "data", "64M"),
    Option("read_ahead", parse_size, 1 * MiB, "Kernel readahead of the mount (its "
           "read_ahead_kb in /sys/class/bdi), so sequential reads reach ObjectFS in requests "
           "of up to 1 MiB instead of 128 KiB: 8 times fewer requests and a third less CPU. "
           "Needs root (otherwise the kernel's 128K stays); 0 leaves the kernel's value.",
           "data", "1M"),
    Option("staging_dir", _str, None, "Directory for local staging of random writes. Default: "
           "/var/tmp/objectfs for root, else $XDG_CACHE_HOME/objectfs/staging.", "data",
           "see text"),
    # -- local tier (hot files on local disk) and write-back
    Option("cache_dir", _str, None, "Directory of the local tier: file data kept on local disk, "
           "keyed by bucket, key and ETag, plus files staged for write-back and the attributes "
           "metadata_cache keeps. Default: "
           "/var/cache/objectfs for root, else $XDG_CACHE_HOME/objectfs (~/.cache/objectfs).",
           "cache", "see text"),
    Option("cache_size", parse_size, 10 * GiB, "Most bytes the local tier keeps on disk; "
           "least recently used data is evicted first, pinned data never. 0 disables it.",
           "cache", "10G"),
    Option("writeback", parse_writeback, None, "Write-back: close() returns once the file is "
           "staged durably (fsync'd) under cache_dir, and the upload to S3 happens in the "
           "background this many seconds later (bare flag: 5; repeated writes of a file within "
           "the delay are uploaded once). fsync() still waits for S3. Unset: close() uploads.",
           "cache", "off"),
    Option("writeback_drain_timeout", parse_seconds, 60.0, "Seconds unmount and SIGTERM wait "
           "for staged write-back uploads; what is left is uploaded by the next mount with the "
           "same cache_dir.", "cache"),
    Option("cache_compress", _choice("none", "zstd"), "none", "Compress cached blocks with "
           "zstd (level 3): more data fits in cache_size, at some CPU per read (see the README "
           "for measured figures). Blocks that do not shrink are stored as they are.", "cache"),
    Option("cache_pin", parse_globs, None, "Paths kept in the local tier and never evicted: "
           "globs relative to the mount root, separated by ':' (e.g. 'models/*:*.sqlite'); '*' "
           "also matches '/'. Matching files are pinned as they are cached and at mount (removing a "
           "glob unpins nothing: use 'objectfs cache unpin').", "cache",
           "unset"),
    Option("cache_whole_file_max", parse_size, 4 * MiB, "With the local tier, the first read "
           "of a file up to this size fetches and caches the whole file, so later reads at any "
           "offset are local. 0 turns this off.", "cache", "4M"),
    Option("cache_fill_max", parse_size, 128 * MiB, "With the local tier, a file up to this "
           "size that is read at random (a second read out of sequence in one open file) is "
           "fetched whole into the tier in the background, in 8 MiB GETs (8 at a time for "
           "all such files); reads of bytes it has not brought yet wait for it, and it "
           "fetches those next. The reads that follow are local. Files bigger than half of "
           "cache_size are not filled. 0 turns this off.",
           "cache", "128M"),
    # -- process
    Option("log_level", _choice("debug", "info", "warning", "error"), "warning",
           "Logging level.", "process"),
    Option("log_file", _str, None, "Log to this file (default: stderr in the foreground, syslog "
           "as a daemon).", "process", "unset"),
    Option("metrics_port", parse_port, 0, "Serve Prometheus metrics on "
           "http://127.0.0.1:PORT/metrics (loopback only). 0: off.", "process"),
    Option("shutdown_timeout", parse_seconds, 300.0, "Seconds SIGTERM, SIGINT or an unmount "
           "wait for pending uploads; then each file not uploaded is logged and the daemon "
           "exits with code 1. Keep systemd's TimeoutStopSec above it.", "process"),
    Option("fsname", _str, None, "Source shown in mount(8) and /proc/mounts (characters "
           "beyond ASCII percent-encoded).", "process",
           "s3://BUCKET[/PREFIX]"),
]

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
# Accepted spellings of the same option (s3fs and mount(8) users' habits).
# s3fs's "endpoint" is the signing region, its "url" the endpoint URL.
ALIASES = {"endpoint": "region", "url": "endpoint_url",
           "use_path_request_style": "path_style"}

# mount(8)'s filesystem-independent options, which fstab lines and mount
# helpers pass along with ours.  Those the kernel applies to a FUSE mount go
# to it (the last of each pair wins, as in mount(8)); the rest only mean
# something to mount(8), systemd or the administrator and are dropped.
KERNEL_FLAGS = {flag: group for group, flags in {
    "suid": ("suid", "nosuid"), "dev": ("dev", "nodev"), "exec": ("exec", "noexec"),
    "sync": ("sync", "async"), "dirsync": ("dirsync",),
}.items() for flag in flags}
# Access times are never recorded (every mount is noatime), so the atime
# options have nothing to change; symfollow is the kernel's default.
DROPPED_FLAGS = frozenset({
    "defaults", "auto", "noauto", "_netdev", "nofail", "user", "users", "nouser", "owner",
    "group", "atime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime",
    "nolazytime", "diratime", "nodiratime", "noatime", "iversion", "noiversion", "mand",
    "nomand", "silent", "loud", "comment", "bg", "fg", "symfollow"})


def is_dropped(name: str) -> bool:
    """A mount(8)/systemd option that has no meaning for ObjectFS itself."""
    return name in DROPPED_FLAGS or name.lower().startswith("x-")


@dataclass(frozen=True)
class Config:
    bucket: str
    prefix: str
    mountpoint: str
    foreground: bool = False
    values: Mapping[str, Any] = field(default_factory=dict)
    # mount(8) flags for the kernel mount (nosuid, nodev, noexec, ...)
    kernel_flags: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        # Options are reached as attributes: cfg.part_size.
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **values: Any) -> "Config":
        merged = dict(self.values)
        merged.update(values)
        return dataclasses.replace(self, values=merged)


def defaults() -> dict[str, Any]:
    return {o.name: o.default for o in OPTIONS}


def _set(values: dict[str, Any], name: str, raw: Any, source: str,
         kernel: dict[str, str] | None = None) -> None:
    name = ALIASES.get(name, name)
    if is_dropped(name):
        return
    if name == "rw" or (name in KERNEL_FLAGS and kernel is not None):
        try:
            on = parse_bool(raw)
        except ValueError as e:
            raise ConfigError(f"bad value for {name} ({source}): {raw!r}: {e}") from None
        if name == "rw":
            values["ro"] = not on
        elif on:
            kernel[KERNEL_FLAGS[name]] = name
        return
    if name == "remount":
        raise ConfigError("remount is not supported: unmount and mount again")
    if name == "nosymfollow":
        # libfuse (3.14) cannot hand it to the kernel; a mount without it
        # would quietly follow symlinks the user asked not to follow
        raise ConfigError("nosymfollow is not supported (libfuse cannot pass it to the kernel)")
    opt = BY_NAME.get(name)
    if opt is None:
        raise ConfigError(f"unknown option {name!r} ({source}); see 'objectfs mount --help'")
    if raw is None:
        values[name] = None
        return
    try:
        values[name] = opt.parse(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad value for {name} ({source}): {raw!r}: {e}") from None


def parse_o(text: str) -> list[tuple[str, str | bool]]:
    """Split '-o a=1,b,c=x' into pairs; a bare flag means True."""
    out: list[tuple[str, str | bool]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            k, v = item.split("=", 1)
            out.append((k.strip(), v))
        else:
            out.append((item, True))
    return out


def load_yaml(path: str) -> dict[str, Any]:
    import yaml

    class Strict(yaml.BaseLoader):
        """BaseLoader keeps every scalar as its text, so "0644" stays octal
        digits (YAML 1.1 would turn it into the int 420) and each option
        parses its own value exactly as it would from -o.  A key given
        twice is refused: which one wins would be a guess."""

        def construct_mapping(self, node, deep=False):
            seen: list = []
            for k, _ in node.value:
                key = self.construct_object(k, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice", k.start_mark)
                seen.append(key)
            return super().construct_mapping(node, deep)

    try:
        with open(path) as f:
            data = yaml.load(f, Loader=Strict)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        raise ConfigError(f"config file {path}{where}: invalid YAML"
                          + (f" ({problem})" if problem else "")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of option: value")
    return data


def build(bucket: str, prefix: str, mountpoint: str, *, foreground: bool = False,
          yaml_path: str | None = None, o_options: list[str] | None = None,
          flags: Mapping[str, Any] | None = None) -> Config:
    """Merge every source into a validated Config (ConfigError on any problem)."""
    values = defaults()
    kernel: dict[str, str] = {}
    if yaml_path:
        for k, v in load_yaml(yaml_path).items():
            if v in ("", "~", "null", "Null", "NULL"):
                continue  # an empty value keeps the default
            _set(values, str(k), v, f"in {yaml_path}", kernel)
    for text in o_options or ():
        for k, v in parse_o(text):
            _set(values, k, v, "-o", kernel)
    for k, v in (flags or {}).items():
        if v is not None:
            _set(values, k, v, f"--{k.replace('_', '-')}")
    _validate(values)
    return Config(bucket=bucket, prefix=prefix, mountpoint=mountpoint, foreground=foreground,
                  values=values, kernel_flags=tuple(kernel.values()))


def _validate(v: dict[str, Any]) -> None:
    if v["part_size"] < 5 * MiB:
        raise ConfigError("bad value for part_size: S3 requires at least 5M")
    if v["part_size"] > 5 * GiB:
        raise ConfigError("bad value for part_size: S3 allows at most 5G")
    if v["write_buffer_memory"] < v["part_size"]:
        raise ConfigError("bad value for write_buffer_memory: must be at least part_size")
    if v["read_part_size"] < 64 * KiB:
        raise ConfigError("bad value for read_part_size: at least 64K")
    if v["prefetch_max"] < v["read_part_size"]:
        raise ConfigError("bad value for prefetch_max: must be at least read_part_size")
    if v["sse_kms_key_id"] and v["sse"] in (None, "aws:kms"):
        v["sse"] = "aws:kms"
    elif v["sse_kms_key_id"]:
        raise ConfigError("sse_kms_key_id needs sse=aws:kms")
    if v["sse_c_key_file"] and v["sse"]:
        raise ConfigError("sse_c_key_file (SSE-C) and sse cannot be used together")
    if v["no_verify_ssl"]:
        v["verify_ssl"] = False
    if v["max_connections"] > 1024:
        raise ConfigError("bad value for max_connections: at most 1024")
    if v["allow_other"] and not v["default_permissions"]:
        # nothing would check permissions: every user could read, write,
        # chmod and chown everything in the mount
        raise ConfigError("allow_other needs default_permissions: without it no permission "
                          "is checked, and every user could read and change every file")
    if v["allow_other"] and v["allow_root"]:
        # libfuse would quietly keep allow_root only: everyone but root and
        # the owner would be refused, the opposite of what allow_other says
        raise ConfigError("allow_other and allow_root cannot be used together: "
                          "allow_other already lets root in")


def default_cache_dir() -> str:
    if os.geteuid() == 0:
        return "/var/cache/objectfs"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "objectfs")


def cache_root(cfg: "Config") -> str:
    """The local tier's directory for this configuration."""
    return cfg.cache_dir or default_cache_dir()


def default_staging_dir() -> str:
    if os.geteuid() == 0:
        return "/var/tmp/objectfs"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "objectfs", "staging")


def example_yaml() -> str:
    """The documented example config: every option with its default."""
    lines = ["# ObjectFS configuration file (objectfs mount --config FILE).",
             "# Every option with its default. Any of them can also be given as",
             "# -o name=value on the command line, which wins over this file.",
             "# Sizes take K, M, G, T suffixes (binary); modes are octal.", ""]
    group = None
    for o in OPTIONS:
        if o.group != group:
            group = o.group
            lines += ["", f"# --- {group}"]
        lines.append("")
        words, line = o.doc.split(), "#"
        for w in words:
            if len(line) + len(w) + 1 > 78:
                lines.append(line)
                line = "#"
            line += " " + w
        lines.append(line)
        shown = o.shown_default
        if shown is None:
            d = o.default
            shown = ("true" if d else "false") if isinstance(d, bool) else str(d)
        if o.parse is parse_mode and o.default is not None:
            shown = f'"{shown}"'
        # Options without a fixed default are shown commented out.
        lines.append(("# " if o.default is None else "") + f"{o.name}: {shown}")
    return "\n".join(lines) + "\n"


def options_markdown() -> str:
    """The README's options table, generated so it cannot drift."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for o in OPTIONS:
        shown = o.shown_default
        if shown is None:
            d = o.default
            shown = ("true" if d else "false") if isinstance(d, bool) else str(d)
        rows.append(f"| `{o.name}` | {shown} | {o.doc} |")
    return "\n".join(rows) + "\n"
