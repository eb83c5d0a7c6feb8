"""Shared fixtures: the read-only real test data next to the project."""

import os

# TensorFlow is imported for TFRecord I/O only; keep its start-up chatter out of test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# In-process runs get the XLA settings the entry points (`kd-mh ...` in subprocesses) run with, so
# the two give the same numbers (importing the package sets them; JAX is not imported yet).
import launch  # pylint: disable=unused-import,wrong-import-position  # noqa: F401

import base64
import io
import pathlib
import re
import zlib

import numpy as np
import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> pathlib.Path:
  """A path under ../shared/data; skips the calling test when it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"real test data not found at {path} (only present in the development checkout)")
  return path


def face_rows(crops: np.ndarray, mask: np.ndarray) -> list[bytes]:
  """The middle pixel row of every face crop [T, S, S, C] where `mask`: what `face_pixel_files`
  looks for. Near-uniform rows are left out, so a match cannot be a coincidence."""
  rows = [crop[crop.shape[0] // 2, :, 0].tobytes() for crop in np.asarray(crops)[mask]]
  return [row for row in rows if len(set(row)) > 8]


def _payloads(path: pathlib.Path):
  """The bytes of a file and every decoding of them where a face image could hide: each bytes
  field of its tf.train.Examples (TFRecord shards, .pb records) raw and zlib-inflated, the pixels
  of PNGs, of base64 PNGs inlined in HTML."""
  import PIL.Image  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  data = path.read_bytes()
  yield data
  serialized = []
  if path.suffix == ".pb":
    serialized = [data]
  elif ".tfrecord" in path.name:
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
  for record in serialized:
    for feature in tf.train.Example.FromString(record).features.feature.values():
      for value in feature.bytes_list.value:
        yield value
        try:
          yield zlib.decompress(value)
        except zlib.error:
          pass
  pngs = [data] if path.suffix == ".png" else []
  if path.suffix == ".html":
    pngs += [base64.b64decode(b) for b in re.findall(rb"data:image/png;base64,([A-Za-z0-9+/=]+)",
                                                     data)]
  for png in pngs:
    with PIL.Image.open(io.BytesIO(png)) as image:
      yield np.asarray(image.convert("L")).tobytes()


def face_pixel_files(root: pathlib.Path, rows: list[bytes]) -> list[str]:
  """Files under `root` that hold any of the face `rows` (`face_rows`), in any of `_payloads`."""
  assert rows, "no face rows to look for"
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                and any(row in payload for payload in _payloads(p) for row in rows))


@pytest.fixture
def shared_data():
  return shared_path()


def load_config(name: str, arg: str = ""):
  """configs/<name>.py's get_config(arg), as `kd-mh train --config=configs/<name>.py:arg` does."""
  from kd_mh import train  # pylint: disable=import-outside-toplevel
  return train.load_config(name, arg)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
  """A generated demo corpus of 20 two-second clips, and its preparation (14 train, 3 validation,
  3 test clips): {"root": the corpus folder, "prepared": the build's output folder,
  "data_dir": its tfds directory}."""
  from data_prep import build  # pylint: disable=import-outside-toplevel
  from data_prep import corpora  # pylint: disable=import-outside-toplevel
  from data_prep import synthetic  # pylint: disable=import-outside-toplevel
  tmp = tmp_path_factory.mktemp("demo")
  synthetic.make_demo_corpus(tmp / "corpus", n_clips=20, seed=0, duration_s=2.0, progress=False)
  summary = build.build(corpora.read_corpus("demo", str(tmp / "corpus")), tmp / "prepared",
                        workers=1, corpus="demo", progress=False)
  assert summary["splits"] == {"train": 14, "validation": 3, "test": 3}
  return {"root": tmp / "corpus", "prepared": tmp / "prepared",
          "data_dir": summary["tfds_data_dir"]}


@pytest.fixture(scope="session")
def tiny_runs(demo_corpus, tmp_path_factory):
  """Tiny (`runlocal`) training runs on `demo_corpus`, offline (randomly initialised teacher):
  {"teacher": a 2-step teacher workdir, "student": a 4-step student workdir distilled from it}."""
  from kd_mh import train  # pylint: disable=import-outside-toplevel
  tmp = tmp_path_factory.mktemp("tiny_runs")
  data_dir = demo_corpus["data_dir"]
  teacher = load_config("teacher_finetune", f"runlocal,data_dir={data_dir},init=random")
  teacher.num_train_steps = 2
  train.train_and_evaluate(teacher, str(tmp / "teacher"))
  student = load_config("student_kd", f"runlocal,data_dir={data_dir},teacher={tmp / 'teacher'}")
  train.train_and_evaluate(student, str(tmp / "student"))
  return {"teacher": tmp / "teacher", "student": tmp / "student"}
