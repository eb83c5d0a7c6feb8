import numpy as np
import pytest

from kd_mh import records


def _example(t=5, f=30, size=64, mels=64):
  rng = np.random.default_rng(0)
  return {
      "clip_id": "train/dia1_utt2", "corpus": "meld", "speaker_id": "Joey", "split": "train",
      "label": 3, "label_name": "joy", "label_source": "csv", "face_label": -1, "voice_label": 3,
      "duration_s": 2.5, "fps": 10.0, "speaker_coverage": 0.8, "speaker_score": 0.5,
      "n_tracks": 2, "speaker_method": "av", "speaker_tracks": np.array([0, 3]),
      "faces": rng.integers(0, 255, (t, size, size, 1), dtype=np.uint8),
      "face_timestamps": np.arange(t, dtype=np.float32) / 10,
      "face_mask": np.arange(t) % 2 == 0,
      "logmel": rng.normal(size=(f, mels)).astype(np.float32),
      "logmel_mask": np.ones(f, bool),
  }


def test_round_trip_numpy_and_tf():
  feats = records.features()
  example = _example()
  parsed = records.parse_example(records.write_example(example, feats), feats)
  for key, value in example.items():
    if isinstance(value, float):  # scalars are stored as float32
      assert parsed[key] == pytest.approx(value, rel=1e-6), key
    else:
      np.testing.assert_array_equal(parsed[key], value, err_msg=key)
  tf_parsed = records.parse_example_tf(records.write_example(example, feats), feats)
  np.testing.assert_array_equal(tf_parsed["faces"].numpy(), example["faces"])


def test_empty_face_track_for_audio_only_clips():
  feats = records.features(n_mels=80)
  example = _example(t=0, mels=80)
  parsed = records.parse_example(records.write_example(example, feats), feats)
  assert parsed["faces"].shape == (0, 64, 64, 1) and parsed["logmel"].shape == (30, 80)
  assert records.face_shape(feats) == (64, 64, 1) and records.n_mels(feats) == 80


def test_schema_errors_name_the_field():
  feats = records.features()
  with pytest.raises(ValueError, match="face_mask"):
    records.write_example({**_example(), "face_mask": np.ones(2, bool)}, feats)
  with pytest.raises(ValueError, match="logmel has shape"):
    records.write_example(_example(mels=80), feats)
  with pytest.raises(ValueError, match="missing fields"):
    records.write_example({k: v for k, v in _example().items() if k != "label"}, feats)


def test_serialised_bytes_are_the_same_in_every_process():
  """The feature map's order must not follow the process's hash seed (builds run in workers)."""
  import hashlib  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  script = ("import hashlib, sys; sys.path.insert(0, 'tests'); import test_records as t; "
            "from kd_mh import records; f = records.features(); "
            "print(hashlib.sha256(records.write_example(t._example(), f)).hexdigest())")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  digests = set()
  for seed in ("1", "2", "3"):
    env = {**os.environ, "PYTHONHASHSEED": seed, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    digests.add(out[-1])
  here = hashlib.sha256(records.write_example(_example(), records.features())).hexdigest()
  assert digests == {here}
