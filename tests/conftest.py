"""Shared pytest fixtures: quiet TensorFlow, and generated detection data in real layouts."""

import os
import pathlib
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The torch/torchvision pair of requirements-test.txt is a CUDA build that brings triton; its
# LLVM crashes the process (segfault) when it loads after TensorFlow, and torchvision.ops
# imports it through torch._dynamo. Nothing here compiles GPU kernels: a None entry makes
# 'import triton' fail cleanly, and torch then does without it.
sys.modules.setdefault("triton", None)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """Generated detection data in COCO 2017's layout (`coco_mini/`) and in Pascal VOC's as
    the BCCD set lays it out (`bccd/`), with their real quirks: tests/helpers/sample_data.py."""
    # Imported here: it imports TensorFlow, which must see TF_CPP_MIN_LOG_LEVEL first.
    from tests.helpers import sample_data as sample_data_lib

    return sample_data_lib.write_all(tmp_path_factory.mktemp("sample_data"))


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT
