"""The repository explains itself: what code, tests and docs cite exists in the repository.

Citations go to the paper (equations, sections, figures) and to `docs/`; nothing cites a
document the repository does not hold, and no test reads data from outside it.
"""

import os
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", ".ruff_cache", ".pytest_cache", "__pycache__", "runs", "data",
             "paa_tf.egg-info"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".cfg", ".toml", ".txt", ""}


def text_files():
    # os.walk, pruned: .venv alone holds ~100,000 files that rglob would list and drop.
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in SKIP_DIRS]
        for name in names:
            path = pathlib.Path(folder) / name
            if path.suffix in TEXT_SUFFIXES:
                yield path


def test_no_citation_of_an_outside_specification():
    needle = "spec " + "\u00a7"  # spelled so that this file does not match itself
    found = [f"{path.relative_to(REPO)}:{number}"
             for path in text_files()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if needle in line]
    assert not found, f"cite the paper or docs/ instead: {found}"


def test_cited_docs_exist():
    """Every docs page named in code, tests, configs and docs, and every relative link of
    README.md and docs/*.md, is a file of the repository."""
    missing = set()
    for path in text_files():
        text = path.read_text(errors="replace")
        for name in re.findall(r"docs/[A-Za-z_]+\.md", text):
            if not (REPO / name).is_file():
                missing.add(f"{path.relative_to(REPO)} -> {name}")
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text):
                if not (path.parent / target).exists():
                    missing.add(f"{path.relative_to(REPO)} -> {target}")
    assert not missing, sorted(missing)


def test_tests_need_no_data_outside_the_repository():
    found = [f"{path.name}:{number}"
             for path in (REPO / "tests").glob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if "shared" + "/data" in line or ".." + "/shared" in line]
    assert not found, f"use the sample_data fixture (tests/helpers/sample_data.py) instead: {found}"
