"""Every claim in SEMANTICS.md names a test; every named test must exist.

References are written in brackets: ``[ops: test_a, test_b, posix:test_rw.py test_c]``.
A prefix maps to a test file (or, for ``unit:`` and ``posix:``, to a directory
whose file is named next); names may use shell globs and must match at least
one test function.
"""

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILES = {
    "ops": "tests/integration/test_operations.py",
    "ns": "tests/integration/test_namespace.py",
    "attrs": "tests/integration/test_attributes.py",
    "cli": "tests/integration/test_cli.py",
    "interop": "tests/integration/test_interop_s3fs.py",
    "rclone": "tests/integration/test_interop_rclone.py",
    "lean": "tests/integration/test_store_lean.py",
    "smoke": "tests/integration/test_smoke.py",
    "faults": "tests/integration/test_faults.py",
    "storefaults": "tests/integration/test_store_faults.py",
    "proxy": "tests/integration/test_faultproxy.py",
    "obs": "tests/integration/test_observability.py",
    "sse": "tests/integration/test_sse.py",
    "wb": "tests/integration/test_writeback.py",
    "tier": "tests/integration/test_tier.py",
    "mnt": "tests/integration/test_mounting.py",
    "user": "tests/integration/test_user_mounts.py",
    "sd": "tests/integration/test_systemd.py",
    "hostile": "tests/integration/test_hostile.py",
    "limits": "tests/integration/test_limits.py",
    "model": "tests/integration/test_model.py",
    "progs": "tests/integration/test_programs.py",
    "read": "tests/integration/test_read_path.py",
}
DIRS = {"unit": "tests/unit", "posix": "posix_suite"}


def defined_tests(path: Path) -> list[str]:
    return re.findall(r"^\s*def (test_\w+)", path.read_text(), re.M)


def references(text: str):
    """(prefix, "name ...") or, for unit:/posix:, (prefix, "file.py [name ...]")."""
    text = re.sub(r"`[^`]*`", "", text)  # the legend shows the syntax in code spans
    for bracket in re.findall(r"\[([^\]]+)\](?!\()", text):
        prefix, current_file = None, None
        for token in re.split(r",\s*", " ".join(bracket.split())):
            m = re.match(r"(\w+):\s*(.*)$", token)
            if m and m.group(1) in FILES.keys() | DIRS.keys():
                prefix, token = m.group(1), m.group(2)
            elif prefix is None:
                break  # an ordinary bracket, not a reference
            if prefix in DIRS:
                if token.split()[0].endswith(".py"):
                    current_file = token.split()[0]
                else:  # more names in the same file
                    token = f"{current_file} {token}"
            yield prefix, token


def test_every_reference_in_semantics_names_an_existing_test():
    text = (REPO / "SEMANTICS.md").read_text()
    refs = list(references(text))
    assert len(refs) > 50, "SEMANTICS.md should back its claims with tests"
    missing = []
    for prefix, token in refs:
        words = token.split()
        if prefix in DIRS:
            path = REPO / DIRS[prefix] / words[0]
            if not path.exists():
                missing.append(f"{prefix}:{words[0]} (no such file)")
                continue
            names = words[1:]
        else:
            path = REPO / FILES[prefix]
            names = words
        defined = defined_tests(path)
        for name in names:
            if not fnmatch.filter(defined, name):
                missing.append(f"{prefix}: {name} (not in {path.relative_to(REPO)})")
    assert not missing, "SEMANTICS.md names tests that do not exist:\n" + "\n".join(missing)


def test_reference_parser_reads_every_form():
    text = ("a claim [ops: test_a, test_b*, posix:test_rw.py test_c,\n  test_d, unit:test_x.py] "
            "and a [link](#x) and `[ops: legend]` and [an aside].")
    assert list(references(text)) == [
        ("ops", "test_a"), ("ops", "test_b*"), ("posix", "test_rw.py test_c"),
        ("posix", "test_rw.py test_d"), ("unit", "test_x.py")]
