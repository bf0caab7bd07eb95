"""Tests import the project's top-level modules (ckpt, model, data) from the repository root;
fixtures shared by several test files."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 1,680 bytes of the embedded corpus: the tiny lm runs' step counts assume this size."""
    from data import text as text_data
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(text_data.read_corpus()[:1680])
    return str(path)
