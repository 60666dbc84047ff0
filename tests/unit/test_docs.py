"""The documentation that is generated from code must match the code."""

from pathlib import Path

from objectfs.config import options_markdown

REPO = Path(__file__).resolve().parents[2]


def test_readme_options_table_matches_the_option_table():
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- options-table")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- end options-table -->")
    assert readme[start:end] == options_markdown(), \
        "README options table is stale: run .ci/regen-docs"
