"""Shared pytest fixtures: quiet TensorFlow, and the real-image data shipped with the tests."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO_ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def real_data():
    """`tests/fixtures`: real COCO 2017 images with their official annotations (`coco_mini/`)
    and real Pascal VOC files (`bccd/`); what each file is and its licence:
    tests/fixtures/README.md."""
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT
