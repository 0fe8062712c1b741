"""Shared pytest fixtures: quiet TensorFlow, and the real data beside the repo."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """`../shared/data` (real COCO/VOC excerpts); skips when absent, as on a user machine."""
    if not (SHARED_DATA / "coco_mini").is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (present only in the project's "
                    "development checkout); these tests need ../shared/data/coco_mini and bccd")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT
