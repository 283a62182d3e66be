"""Fixtures of the training tests (tests/conftest.py's environment setup applies here too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_micro_tokens


@pytest.fixture(scope="session")
def tokens_dir(tmp_path_factory) -> Path:
    """Tokens of a small corpus (micro profile's tokenizer), made once for the training tests."""
    return make_micro_tokens(tmp_path_factory.mktemp("train-data"), seed=1)
