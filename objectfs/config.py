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


def parse_seconds(text: str | float) -> float:
    if isinstance(text, bool):
        raise ValueError("not a duration")
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise ValueError("must be a finite number of seconds, at least 0")
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


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(text):
        s = str(text).strip().lower()
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return s
    return parse


def _str(text) -> str:
    if isinstance(text, bool) or str(text) == "":
        raise ValueError("needs a value (name=value)")
    return str(text)


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
    Option("endpoint_url", _str, None, "S3 endpoint URL (AWS when unset). Path-style addressing is "
           "used when it is set.", "connection", "AWS"),
    Option("region", _str, None, "Region for request signing (boto3's configuration when unset, "
           "else us-east-1).", "connection", "from boto3"),
    Option("profile", _str, None, "Profile in ~/.aws/config and ~/.aws/credentials.", "connection",
           "boto3 default chain"),
    Option("max_connections", parse_positive_int, 32, "Concurrent S3 requests (connection pool "
           "and worker threads).", "connection"),
    Option("connect_timeout", parse_seconds, 5.0, "Seconds to wait for a TCP connection.",
           "connection"),
    Option("read_timeout", parse_seconds, 60.0, "Seconds to wait for response data.",
           "connection"),
    Option("retries", parse_positive_int, 5, "Attempts per S3 request (exponential back-off with "
           "jitter on 5xx, throttling and connection errors).", "connection"),
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
    Option("allow_root", parse_bool, False, "Let root access the mount.", "permissions",
           fuse=True),
    Option("default_permissions", parse_bool, True, "Let the kernel enforce mode bits and "
           "ownership.", "permissions", fuse=True),
    Option("ro", parse_bool, False, "Mount read-only.", "permissions", fuse=True),
    # -- namespace and metadata
    Option("metadata_ttl", parse_seconds, 5.0, "Seconds that cached attributes, lookups and "
           "directory listings are trusted before S3 is asked again (also the kernel's entry and "
           "attribute timeouts). Changes made by other S3 clients show up after at most this "
           "long; our own changes show at once.", "metadata"),
    Option("negative_ttl", parse_seconds, 5.0, "Seconds a 'no such file' answer is cached.",
           "metadata"),
    Option("stat_concurrency", parse_positive_int, 32, "Parallel HEAD requests that fill in "
           "mode and owner while listing a directory.", "metadata"),
    Option("trust_listing", parse_bool, False, "Show attributes from the listing alone (size, "
           "Last-Modified, default mode and owner) and skip the per-entry HEAD; fast, but modes, "
           "owners, mtimes and symlink types stored in metadata show only after a lookup.",
           "metadata"),
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
    Option("staging_dir", _str, None, "Directory for local staging of random writes. Default: "
           "/var/tmp/objectfs for root, else $XDG_CACHE_HOME/objectfs/staging.", "data",
           "see text"),
    # -- local tier (hot files on local disk) and write-back
    Option("cache_dir", _str, None, "Directory of the local tier: file data kept on local disk, "
           "keyed by bucket, key and ETag, plus files staged for write-back. Default: "
           "/var/cache/objectfs for root, else $XDG_CACHE_HOME/objectfs (~/.cache/objectfs).",
           "cache", "see text"),
    Option("cache_size", parse_size, 10 * GiB, "Most bytes the local tier keeps on disk; "
           "least recently used data is evicted first, pinned data never. 0 disables it.",
           "cache", "10G"),
    # -- process
    Option("log_level", _choice("debug", "info", "warning", "error"), "warning",
           "Logging level.", "process"),
    Option("log_file", _str, None, "Log to this file (default: stderr in the foreground, syslog "
           "as a daemon).", "process", "unset"),
    Option("fsname", _str, None, "Source shown in mount(8) and /proc/mounts.", "process",
           "s3://BUCKET[/PREFIX]"),
]

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
# Accepted spellings of the same option (s3fs and mount(8) users' habits).
ALIASES = {"endpoint": "endpoint_url", "url": "endpoint_url"}


@dataclass(frozen=True)
class Config:
    bucket: str
    prefix: str
    mountpoint: str
    foreground: bool = False
    values: Mapping[str, Any] = field(default_factory=dict)

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


def _set(values: dict[str, Any], name: str, raw: Any, source: str) -> None:
    name = ALIASES.get(name, name)
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

    try:
        with open(path) as f:
            # BaseLoader keeps every scalar as its text, so "0644" stays octal
            # digits (YAML 1.1 would turn it into the int 420) and each option
            # parses its own value exactly as it would from -o.
            data = yaml.load(f, Loader=yaml.BaseLoader)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where}: invalid YAML") from None
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
    if yaml_path:
        for k, v in load_yaml(yaml_path).items():
            if v in ("", "~", "null", "Null", "NULL"):
                continue  # an empty value keeps the default
            _set(values, str(k), v, f"in {yaml_path}")
    for text in o_options or ():
        for k, v in parse_o(text):
            _set(values, k, v, "-o")
    for k, v in (flags or {}).items():
        if v is not None:
            _set(values, k, v, f"--{k.replace('_', '-')}")
    _validate(values)
    return Config(bucket=bucket, prefix=prefix, mountpoint=mountpoint, foreground=foreground,
                  values=values)


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
