"""mount(8)/fstab options, s3fs aliases, source forms and s3fs passwd files."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from objectfs import cli, credentials
from objectfs.config import build
from objectfs.errors import ConfigError
from objectfs.mount import fuse_options


def cfg(*o):
    return build("bucket", "", "/mnt", o_options=list(o))


# -- mount(8) options ------------------------------------------------------------------

FSTAB_OPTS = ("_netdev,allow_other,nofail,noauto,auto,defaults,x-systemd.automount,"
              "x-systemd.requires=network-online.target,X-mount.mkdir,comment=backup,"
              "user,users,nouser,owner,group,atime,noatime,relatime,strictatime,lazytime")


def test_mount8_options_are_accepted_and_dropped():
    c = cfg(FSTAB_OPTS)
    assert c.allow_other is True
    assert c.kernel_flags == ()
    assert fuse_options(c) == {"fsname=s3://bucket", "subtype=objectfs", "noatime",
                               "allow_other", "default_permissions"}


def test_flags_libfuse_cannot_pass_are_dropped_or_refused():
    """libfuse 3.14 knows no nodiratime or (no)symfollow: handed to it they
    fail every mount.  nodiratime is implied by noatime and symfollow is
    the default, so they are dropped; nosymfollow is refused in one line."""
    c = cfg("rw,nodiratime,symfollow,nosuid")
    assert set(c.kernel_flags) == {"nosuid"}
    assert not {"nodiratime", "symfollow"} & fuse_options(c)
    with pytest.raises(ConfigError, match="nosymfollow is not supported"):
        cfg("nosymfollow")


def test_kernel_flags_go_to_the_kernel_last_one_wins():
    c = cfg("rw,nosuid,nodev,noexec,suid,sync,async")
    assert c.ro is False
    assert set(c.kernel_flags) == {"suid", "nodev", "noexec", "async"}
    assert {"suid", "nodev", "noexec", "async"} <= fuse_options(c)
    assert cfg("ro").ro is True and "ro" in fuse_options(cfg("ro"))
    assert cfg("ro,rw").ro is False and cfg("rw,ro").ro is True


def test_remount_and_unknown_options_are_refused():
    with pytest.raises(ConfigError, match="remount"):
        cfg("remount")
    with pytest.raises(ConfigError, match="unknown option 'frobnicate'"):
        cfg("_netdev,frobnicate")
    with pytest.raises(ConfigError, match="nosuid"):
        cfg("nosuid=maybe")


def test_s3fs_aliases():
    c = cfg("url=http://127.0.0.1:9000,endpoint=eu-west-1,use_path_request_style")
    assert c.endpoint_url == "http://127.0.0.1:9000"
    assert c.region == "eu-west-1", "s3fs's endpoint= is the region"
    assert c.path_style is True
    assert cfg().path_style is False
    assert cfg("passwd_file=/etc/passwd-s3fs").passwd_file == "/etc/passwd-s3fs"


def test_options_people_know_exist():
    c = cfg("allow_other,default_permissions,ro,uid=1000,gid=100,umask=022,"
            "file_mode=0600,dir_mode=0700")
    assert (c.uid, c.gid, c.umask, c.file_mode, c.dir_mode) == (1000, 100, 0o22, 0o600, 0o700)
    assert {"allow_other", "default_permissions", "ro"} <= fuse_options(c)
    assert "allow_root" in fuse_options(cfg("allow_root"))


def test_allow_other_with_allow_root_is_refused():
    """libfuse keeps allow_root alone when both are given, so other users would be
    refused (seen through a real mount: nobody got EACCES)."""
    with pytest.raises(ConfigError, match="allow_other and allow_root cannot be used together"):
        cfg("allow_other,allow_root")
    with pytest.raises(ConfigError, match="cannot be used together"):
        cfg("allow_root", "allow_other")


# -- source forms and the mount.fuse3 calling convention -----------------------------------

@pytest.mark.parametrize("source,expected", [
    ("bucket", ("bucket", "")), ("bucket/photos", ("bucket", "photos")),
    ("bucket:/photos", ("bucket", "photos")), ("bucket:photos/2024", ("bucket", "photos/2024")),
    ("s3://bucket/photos/", ("bucket", "photos")), ("s3://bucket", ("bucket", "")),
    ("S3://bucket/photos", ("bucket", "photos")),
])
def test_source_forms(source, expected):
    assert cli.parse_source(source) == expected


@pytest.mark.parametrize("source", ["gs://bucket", "https://host/bucket", "s3a://bucket/x"])
def test_a_source_of_another_scheme_is_refused_not_taken_for_bucket_colon_prefix(source):
    # "gs://b" had meant bucket "gs", prefix "//b"
    with pytest.raises(ConfigError, match="is not S3"):
        cli.parse_source(source)


@given(st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}", fullmatch=True),
       st.from_regex(r"[a-z0-9_-]{1,8}(/[a-z0-9_-]{1,8}){0,3}", fullmatch=True))
def test_every_source_form_names_the_same_place(bucket, prefix):
    forms = [f"s3://{bucket}/{prefix}", f"{bucket}/{prefix}", f"{bucket}:/{prefix}"]
    assert {cli.parse_source(f) for f in forms} == {(bucket, prefix)}


def test_no_subcommand_means_mount(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "cmd_mount", lambda args: seen.append(args) or 0)
    assert cli.main(["bucket:/photos", "/mnt/p", "-o", "rw,_netdev"]) == 0
    assert seen[0].source == "bucket:/photos" and seen[0].options == ["rw,_netdev"]
    assert cli.main(["umount", "/nonexistent-mountpoint"]) == 1  # still a subcommand


# -- s3fs passwd files ----------------------------------------------------------------------

def test_passwd_file_lines():
    text = "# comment\n\nAKDEFAULT:secretdefault\nother:AKOTHER:secretother\n" \
           "bucket:AKBUCKET:secretbucket\n"
    pair = credentials.parse_passwd(text, "bucket", "f")
    assert (pair.access_key, pair.secret_key) == ("AKBUCKET", "secretbucket")
    pair = credentials.parse_passwd(text, "third", "f")
    assert pair.access_key == "AKDEFAULT"
    assert "secret" not in repr(pair)
    assert credentials.parse_passwd("b:A:S\n", "c", "f") is None


@pytest.mark.parametrize("text,words", [
    ("A:B:C:D\n", "line 1"), ("x:\n", "empty"), ("A:S\nB:T\n", "more than one"),
])
def test_bad_passwd_files(text, words):
    with pytest.raises(ConfigError, match=words):
        credentials.parse_passwd(text, "b", "f")


def write(path, text, mode):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_passwd_file_readable_by_others_is_refused(tmp_path):
    p = write(tmp_path / "pw", "A:S\n", 0o644)
    with pytest.raises(ConfigError) as ei:
        credentials.read_passwd(p, "b")
    msg = str(ei.value)
    assert "group or others" in msg and "0644" in msg and "chmod 600" in msg
    assert ei.value.exit_code == 2 and "\n" not in msg and "S" not in msg.split(":")[-1]
    os.chmod(p, 0o640)
    with pytest.raises(ConfigError, match="group or others"):
        credentials.read_passwd(p, "b")
    os.chmod(p, 0o400)
    assert credentials.read_passwd(p, "b").access_key == "A"
    with pytest.raises(ConfigError, match="cannot read passwd file"):
        credentials.read_passwd(str(tmp_path / "missing"), "b")
    d = tmp_path / "a-dir"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="cannot read passwd file .*directory"):
        credentials.read_passwd(str(d), "b")
    latin = tmp_path / "latin"
    latin.write_bytes(b"A:S\n# caf\xe9\n")
    latin.chmod(0o600)
    with pytest.raises(ConfigError, match="not UTF-8"):
        credentials.read_passwd(str(latin), "b")


@pytest.mark.parametrize("url,words", [
    ("127.0.0.1:9000", "expected http://HOST"), ("ftp://x", "expected http://HOST"),
    ("http://[::1", "Invalid IPv6"), ("http://127.0.0.1:99999", "Port out of range")])
def test_endpoint_urls_are_checked(url, words):
    with pytest.raises(ConfigError, match="bad value for endpoint_url") as ei:
        build("b", "", "/m", flags={"endpoint_url": url})
    assert words in str(ei.value) and ei.value.exit_code == 2
    assert build("b", "", "/m", flags={"endpoint_url": "https://h:9000"}).endpoint_url \
        == "https://h:9000"


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"log_level: info\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        build("b", "", "/m", yaml_path=str(latin))


@pytest.mark.parametrize("prefix,fsname", [
    ("a,allow_other", "fsname=s3://b/a\\,allow_other"), ("données", "fsname=s3://b/donn%C3%A9es"),
    ("back\\slash", "fsname=s3://b/back\\\\slash")])
def test_the_fsname_never_carries_options_or_non_ascii(prefix, fsname):
    """libfuse splits options at commas (a backslash escapes one) and
    pyfuse3 passes them as ASCII: a prefix "a,allow_other" made the mount
    allow other users, and "données" failed it with a traceback."""
    opts = fuse_options(build("b", prefix, "/mnt"))
    assert fsname in opts and "allow_other" not in opts


def test_credential_precedence(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(credentials, "DEFAULT_FILES", ("~/.passwd-s3fs",))
    explicit = write(tmp_path / "explicit", "EXPLICIT:s1\n", 0o600)
    write(home / ".passwd-s3fs", "HOMEFILE:s2\n", 0o600)

    def chain(found):
        calls = []

        def ask():
            calls.append(1)
            return found
        return ask, calls

    ask, calls = chain(True)
    r = credentials.resolve("b", explicit, None, ask, env={"AWS_ACCESS_KEY_ID": "ENV"})
    assert r.access_key == "EXPLICIT", "passwd_file= wins over everything"
    with pytest.raises(ConfigError, match="profile"):
        credentials.resolve("b", explicit, "work", ask, env={})
    assert credentials.resolve("b", None, "work", ask, env={}) is None
    assert credentials.resolve("b", None, None, ask, env={"AWS_ACCESS_KEY_ID": "E"}) is None
    r = credentials.resolve("b", None, None, ask,
                            env={"AWSACCESSKEYID": "S3FSENV", "AWSSECRETACCESSKEY": "x"})
    assert r.access_key == "S3FSENV"
    assert calls == []
    # ~/.passwd-s3fs only when boto3's chain has nothing
    assert credentials.resolve("b", None, None, ask, env={}) is None and calls == [1]
    ask, calls = chain(False)
    assert credentials.resolve("b", None, None, ask, env={}).access_key == "HOMEFILE"
    os.remove(home / ".passwd-s3fs")
    assert credentials.resolve("b", None, None, ask, env={}) is None
    assert calls == [1], "the chain is not asked when no passwd file exists"


def test_mount_flags_in_a_yaml_file(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("nosuid: true\nnoexec: yes\n_netdev: true\nnoauto: yes\nrw: true\n")
    c = build("bucket", "", "/mnt", yaml_path=str(y))
    assert set(c.kernel_flags) == {"nosuid", "noexec"} and c.ro is False


# -- the files in etc/ and mount_helpers/ -------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_fstab_example_lines_are_accepted():
    lines = [ln.split() for ln in open(os.path.join(REPO, "etc", "fstab.example"))
             if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 3
    for source, mountpoint, fstype, options, dump, passno in lines:
        assert fstype in ("fuse.objectfs", "objectfs")
        bucket, prefix = cli.parse_source(source)
        build(bucket, prefix, mountpoint, o_options=[options])


def run_helper(tmp_path, *args):
    """mount_helpers/mount.objectfs with objectfs replaced by a recorder."""
    import subprocess

    recorder = tmp_path / "objectfs"
    recorder.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    recorder.chmod(0o755)
    nsenter = tmp_path / "nsenter"
    nsenter.write_text('#!/bin/sh\necho nsenter "$1"\nshift\nexec "$@"\n')
    nsenter.chmod(0o755)
    text = open(os.path.join(REPO, "mount_helpers", "mount.objectfs")).read()
    assert "\nOBJECTFS=objectfs\n" in text and "\nNSENTER=/usr/bin/nsenter\n" in text
    helper = tmp_path / "mount.objectfs"
    helper.write_text(text.replace("\nOBJECTFS=objectfs\n", f"\nOBJECTFS={recorder}\n")
                      .replace("\nNSENTER=/usr/bin/nsenter\n", f"\nNSENTER={nsenter}\n"))
    helper.chmod(0o755)
    r = subprocess.run([str(helper), *args], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout.splitlines()


def test_mount_helper_translates_mount8_arguments(tmp_path):
    assert run_helper(tmp_path, "b:/p", "/mnt", "-o", "rw,_netdev", "-n", "-v") == \
        (0, ["mount", "b:/p", "/mnt", "-o", "rw,_netdev"])
    assert run_helper(tmp_path, "s3://b", "/mnt", "-sn", "-o", "a", "-ob=1") == \
        (0, ["mount", "s3://b", "/mnt", "-o", "a,b=1"])
    assert run_helper(tmp_path, "b", "/mnt") == (0, ["mount", "b", "/mnt"])
    assert run_helper(tmp_path, "b", "/mnt", "-f", "-o", "x") == (0, []), "-f: fake"
    assert run_helper(tmp_path, "b")[0] == 2
    assert run_helper(tmp_path, "b", "/mnt", "-o", "x", "-t")[0] == 2, "-t without its type"
    assert run_helper(tmp_path, "b", "/mnt", "-o", "x", "-t", "objectfs.s3") == \
        (0, ["mount", "b", "/mnt", "-o", "x"])


def test_mount_helper_enters_the_namespace_mount8_names(tmp_path):
    """mount -N: util-linux passes the namespace as /proc/PID/fd/N after the type."""
    assert run_helper(tmp_path, "b", "/mnt", "-o", "x", "-t", "objectfs", "-N",
                      "/proc/7/fd/3") == \
        (0, ["nsenter --mount=/proc/7/fd/3", "mount", "b", "/mnt", "-o", "x"])
    assert run_helper(tmp_path, "b", "/mnt", "-N42") == \
        (0, ["nsenter --mount=/proc/42/ns/mnt", "mount", "b", "/mnt"]), "a PID"
    assert run_helper(tmp_path, "b", "/mnt", "-N")[0] == 2
