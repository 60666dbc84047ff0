"""Options: documented defaults, -o parsing, YAML files, and refusal of bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from objectfs import cli, config
from objectfs.config import BY_NAME, OPTIONS, KiB, MiB, GiB, build, example_yaml, parse_o
from objectfs.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "objectfs.example.yaml"


def cfg(*o, yaml_path=None, flags=None):
    return build("bucket", "", "/mnt", o_options=list(o), yaml_path=yaml_path, flags=flags)


def write_yaml(tmp_path, text: str) -> str:
    p = tmp_path / "objectfs.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


# -- defaults --------------------------------------------------------------------

def test_option_names_are_unique_and_documented():
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    for o in OPTIONS:
        assert o.doc.strip(), o.name
        assert o.group, o.name


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.default is not None],
                         ids=lambda o: o.name)
def test_documented_default_parses_to_the_default(opt):
    shown = opt.shown_default
    if shown is None:
        d = opt.default
        shown = ("true" if d else "false") if isinstance(d, bool) else str(d)
    assert opt.parse(shown) == opt.default
    # and the same through -o and through the built config
    c = cfg(f"{opt.name}={shown}")
    assert getattr(c, opt.name) == opt.default


def test_defaults_build_and_are_reachable_as_attributes():
    c = cfg()
    for o in OPTIONS:
        assert getattr(c, o.name) == o.default
    assert c.part_size == 24 * MiB
    assert c.file_mode == 0o644 and c.dir_mode == 0o755
    with pytest.raises(AttributeError):
        c.no_such_option
    c2 = c.replace(metadata_ttl=0.0)
    assert c2.metadata_ttl == 0.0 and c.metadata_ttl == 5.0


def test_example_yaml_states_every_option_and_parses_back_to_the_defaults(tmp_path):
    text = example_yaml()
    for o in OPTIONS:
        assert f"{o.name}:" in text, o.name
    c = cfg(yaml_path=write_yaml(tmp_path, text))
    assert dict(c.values) == config.defaults()


def test_etc_example_file_matches_the_option_table():
    assert EXAMPLE.exists(), "etc/objectfs.example.yaml is the documented-defaults file"
    assert EXAMPLE.read_text() == example_yaml(), (
        "etc/objectfs.example.yaml is out of date: run .ci/regen-docs")


# -- -o ----------------------------------------------------------------------------

def test_parse_o_splits_pairs_and_flags():
    assert parse_o("a=1,b, c = x=y ,,") == [("a", "1"), ("b", True), ("c", " x=y")]
    assert parse_o("") == []


def test_o_options_set_values():
    c = cfg("part_size=16M,upload_concurrency=4", "allow_other,ro=false",
            "metadata_ttl=0.5,file_mode=0600,dir_mode=700,umask=027,uid=1000,gid=0",
            "log_level=DEBUG,checksums=when_supported,read_part_size=64K,prefetch_max=1.5M")
    assert c.part_size == 16 * MiB
    assert c.upload_concurrency == 4
    assert c.allow_other is True and c.ro is False
    assert c.metadata_ttl == 0.5
    assert (c.file_mode, c.dir_mode, c.umask) == (0o600, 0o700, 0o027)
    assert (c.uid, c.gid) == (1000, 0)
    assert c.log_level == "debug" and c.checksums == "when_supported"
    assert c.read_part_size == 64 * KiB and c.prefetch_max == 3 * MiB // 2


@pytest.mark.parametrize("text, expected", [
    ("4096", 4096), ("8M", 8 * MiB), ("8MiB", 8 * MiB), ("8mb", 8 * MiB), ("1G", GiB),
    (" 2 k ", 2 * KiB), ("1.5G", 3 * GiB // 2), ("1T", 1 << 40)])
def test_size_spellings(text, expected):
    assert config.parse_size(text) == expected


def test_later_sources_win():
    assert cfg("part_size=16M", "part_size=32M").part_size == 32 * MiB
    assert cfg("url=http://a", flags={"endpoint_url": "http://b"}).endpoint_url == "http://b"
    # an unset flag (None) does not override
    assert cfg("url=http://a", flags={"endpoint_url": None}).endpoint_url == "http://a"


def test_yaml_loses_to_o(tmp_path):
    y = write_yaml(tmp_path, "part_size: 16M\nretries: 3\n")
    c = cfg("part_size=32M", yaml_path=y)
    assert c.part_size == 32 * MiB and c.retries == 3


# -- refusals ------------------------------------------------------------------------

BAD = [
    "no_such_option=1", "nosuchflag",
    "part_size=abc", "part_size=-1", "part_size=4M", "part_size=6G", "part_size",
    "write_buffer_memory=1M", "read_part_size=1K", "prefetch_max=1M",
    "file_mode=999", "file_mode=10000", "file_mode=rw", "umask=8",
    "uid=-1", "gid=4294967296", "uid=abc",
    "retries=0", "max_connections=1.5", "upload_concurrency", "stat_concurrency=-3",
    "metadata_ttl=-1", "negative_ttl=soon", "connect_timeout",
    "log_level=verbose", "checksums=always", "verify_ssl=maybe", "ro=2",
    # a socket refuses timeouts past what its clock holds: every request failed
    "read_timeout=1e10", "connect_timeout=1e10", "read_timeout=0",
    "max_connections=100000000",   # the bucket check hung filling the pool
    # botocore refused them only in the daemon, with a traceback
    "region=eu west", "region=bad!", "endpoint=http://127.0.0.1:9000",
    # nothing would check permissions for the other users
    "allow_other,default_permissions=false",
]


@pytest.mark.parametrize("opt", BAD)
def test_bad_option_is_a_config_error_with_exit_code_2(opt):
    with pytest.raises(ConfigError) as ei:
        cfg(opt)
    assert ei.value.exit_code == 2
    assert isinstance(ei.value, UserError)
    assert "\n" not in str(ei.value)


def test_cli_reports_config_errors_as_one_line_and_exit_2(capsys, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    # invalid before anything is mounted, so this never touches S3 or FUSE
    assert cli.main(["mount", "s3://bucket", str(mp), "-o", "no_such_option=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("objectfs: ") and err.count("\n") == 1
    assert "no_such_option" in err
    assert cli.main(["mount", "s3://bucket", str(mp), "--no-such-flag"]) == 2
    capsys.readouterr()
    assert cli.main(["mount", "s3://bucket", str(mp), "--region", "bad!"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["mount", "s3://bucket", str(mp), "--config",
                     str(tmp_path / "missing.yaml")]) == 2


# -- YAML files ----------------------------------------------------------------------

def test_yaml_file_values(tmp_path):
    y = write_yaml(tmp_path, """
        # comment
        url: http://127.0.0.1:9000
        part_size: 16M
        file_mode: 0644
        dir_mode: 0750
        umask: 022
        allow_other: yes
        verify_ssl: off
        metadata_ttl: 0
        retries: 7
        log_file:
        uid: ~
        """)
    c = cfg(yaml_path=y)
    assert c.endpoint_url == "http://127.0.0.1:9000"
    assert c.part_size == 16 * MiB
    assert c.file_mode == 0o644, "0644 must stay octal (not YAML 1.1's int 420)"
    assert c.dir_mode == 0o750
    assert c.umask == 0o022
    assert c.allow_other is True and c.verify_ssl is False
    assert c.metadata_ttl == 0.0
    assert c.retries == 7
    assert c.log_file is None and c.uid is None  # empty values keep the default


@pytest.mark.parametrize("spelling", ["0644", "644", "'0644'", '"0644"', "0o644"])
def test_yaml_file_mode_spellings_are_octal(tmp_path, spelling):
    c = cfg(yaml_path=write_yaml(tmp_path, f"file_mode: {spelling}\n"))
    assert c.file_mode == 0o644


def test_empty_yaml_file_is_all_defaults(tmp_path):
    assert dict(cfg(yaml_path=write_yaml(tmp_path, "# nothing\n")).values) == config.defaults()


@pytest.mark.parametrize("text", [
    "no_such_option: 1\n",
    "part_size: lots\n",
    "file_mode: 0999\n",
    "- part_size\n- 8M\n",            # not a mapping
    "part_size: [8M]\n",              # not a scalar
    "part_size: 8M\n  bad: indent\n",  # invalid YAML
    "a: b: c\n",                      # invalid YAML
])
def test_bad_yaml_is_a_config_error(tmp_path, text):
    with pytest.raises(ConfigError) as ei:
        cfg(yaml_path=write_yaml(tmp_path, text))
    assert ei.value.exit_code == 2


def test_invalid_yaml_error_names_the_line(tmp_path):
    y = write_yaml(tmp_path, "part_size: 8M\nretries: 3\na: b: c\n")
    with pytest.raises(ConfigError, match="line 3"):
        cfg(yaml_path=y)


def test_an_option_given_twice_in_yaml_is_refused_with_its_line(tmp_path):
    y = write_yaml(tmp_path, "retries: 3\npart_size: 8M\nretries: 4\n")
    with pytest.raises(ConfigError, match="line 3: invalid YAML \\('retries' is given twice\\)"):
        cfg(yaml_path=y)


def test_missing_yaml_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as ei:
        cfg(yaml_path=str(tmp_path / "nope.yaml"))
    assert ei.value.exit_code == 2


def test_aliases_resolve_to_one_option():
    for alias in config.ALIASES:
        assert config.ALIASES[alias] in BY_NAME
    assert cfg("url=http://x").endpoint_url == "http://x"
