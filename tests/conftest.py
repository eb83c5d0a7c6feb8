"""Shared fixtures: the read-only real test data next to the project."""

import os

# TensorFlow is imported for TFRecord I/O only; keep its start-up chatter out of test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> pathlib.Path:
  """A path under ../shared/data; skips the calling test when it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"real test data not found at {path} (only present in the development checkout)")
  return path


@pytest.fixture
def shared_data():
  return shared_path()
