"""The input pipeline on hand-made prepared corpora whose every value is known."""

import pathlib

import numpy as np
import pytest

from data_prep import build
from kd_mh import input_pipeline as ip
from kd_mh import records

MELS = 8
SIZE = 64


def _example(clip_id, split, label, face_label=-1, voice_label=-1, n_frames=5, n_logmel=10,
             face_value=None, masked_frames=()):
  """A clip whose face frame t is filled with `face_value` (default t) and log-mel row f with f."""
  values = np.arange(n_frames) if face_value is None else np.full(n_frames, face_value)
  faces = np.broadcast_to(values.astype(np.uint8)[:, None, None, None],
                          (n_frames, SIZE, SIZE, 1)).copy()
  face_mask = np.ones(n_frames, bool)
  face_mask[list(masked_frames)] = False
  return {
      "clip_id": clip_id, "corpus": "toy", "speaker_id": "s", "split": split, "label": label,
      "label_name": str(label), "label_source": "test", "face_label": face_label,
      "voice_label": voice_label, "duration_s": 1.0, "fps": 10.0, "speaker_coverage": 1.0,
      "speaker_score": 1.0, "n_tracks": 1, "speaker_method": "av",
      "speaker_tracks": np.zeros(1, np.int64), "faces": faces,
      "face_timestamps": np.arange(n_frames, dtype=np.float32) / 10, "face_mask": face_mask,
      "logmel": np.repeat(np.arange(n_logmel, dtype=np.float32)[:, None], MELS, axis=1),
      "logmel_mask": np.ones(n_logmel, bool),
  }


def _write_corpus(out: pathlib.Path, corpus: str, examples, examples_per_shard=1000) -> str:
  """Writes `examples` as a prepared corpus (tfds shards) under out; returns its tfds data_dir."""
  feats = records.features(n_mels=MELS)
  for ex in examples:
    path = out / "clips" / f"{ex['clip_id']}.pb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.write_example(ex, feats))
  build.write_shards(out, corpus, [{"clip_id": ex["clip_id"], "split": ex["split"]}
                                   for ex in examples], feats,
                     examples_per_shard=examples_per_shard)
  return str(out / "tfds")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """13 train clips (clip i: label i % 7, i + 1 face frames, 10 + i log-mel frames; clip 9's first
  5 frames without a face) over 3 shards, and 5 validation clips."""
  out = tmp_path_factory.mktemp("toy")
  train = [_example(f"train/c{i:02d}", "train", i % 7, face_label=(i + 1) % 7 if i % 2 else -1,
                    n_frames=i + 1, n_logmel=10 + i,
                    masked_frames=range(5) if i == 9 else ()) for i in range(13)]
  validation = [_example(f"validation/v{i}", "validation", i, n_frames=2) for i in range(5)]
  data_dir = _write_corpus(out, "toy", train + validation, examples_per_shard=5)
  return data_dir


@pytest.fixture(scope="module")
def train_split(toy):
  return ip.open_split(toy, "kd_mh_toy", "train")


def _batches(split, **kwargs):
  args = dict(batch_size=4, max_frames=4, max_logmel_frames=12, seed=0, train=True,
              num_parallel_calls=1)
  args.update(kwargs)
  return ip.Batches(split, **args)


def _take(batches, n):
  return [next(batches) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_open_split_indexes_every_record_of_every_shard(train_split):
  assert len(train_split) == 13 and len(set(train_split.paths)) == 3
  # tfds shards take every 3rd clip id (write_shards), so record order follows the shards.
  assert sorted(train_split.label.tolist()) == sorted(i % 7 for i in range(13))
  assert train_split.has_face.all()
  assert ip.example_count(train_split) == {"examples": 13, "labelled": 13, "with_face": 13}


def test_read_field_follows_split_order(train_split):
  clip_ids = ip.read_field(train_split, "clip_id")
  assert sorted(clip_ids) == [f"train/c{i:02d}" for i in range(13)]
  # The same order as the split's index (and so as evaluation batches and `inference.predict`).
  np.testing.assert_array_equal([int(c[-2:]) % 7 for c in clip_ids], train_split.label)
  np.testing.assert_array_equal(ip.read_field(train_split, "label"), train_split.label)
  assert set(ip.read_field(train_split, "speaker_id")) == {"s"}
  with pytest.raises(ValueError, match="has no field 'age'"):
    ip.read_field(train_split, "age")
  # A field whose length varies by clip (clip i has 10 + i log-mel frames) comes back whole.
  logmels = ip.read_field(train_split, "logmel")
  assert logmels.dtype == object
  for clip_id, logmel in zip(clip_ids, logmels):
    n = 10 + int(clip_id[-2:])
    np.testing.assert_array_equal(logmel, np.repeat(np.arange(n, dtype=np.float32)[:, None],
                                                     MELS, axis=1))


def test_open_split_errors_name_what_is_missing(toy):
  with pytest.raises(ValueError, match="no prepared corpus 'kd_mh_nope'"):
    ip.open_split(toy, "kd_mh_nope", "train")
  with pytest.raises(ValueError, match="no split 'test'"):
    ip.open_split(toy, "kd_mh_toy", "test")


def test_target_labels_prefer_the_modality_label():
  label = np.array([0, 1, 2, -1])
  own = np.array([-1, 4, -1, 5])
  np.testing.assert_array_equal(ip.target_labels(label, own), [0, 4, 2, 5])


def _record(split, i):
  """Record i of a split, parsed from the bytes the index points at."""
  with open(split.paths[split.shard[i]], "rb") as f:
    f.seek(int(split.offset[i]))
    return records.parse_example(f.read(int(split.length[i])), split.features)


def test_faces_are_uniformly_subsampled_or_padded_and_logmel_centre_cropped(train_split):
  batch = next(_batches(train_split, train=False, batch_size=13))
  np.testing.assert_array_equal(batch["index"], np.arange(13))
  for i in range(13):
    ex = _record(train_split, i)
    assert (batch["label"][i], batch["face_label"][i]) == (ex["label"], ex["face_label"])
    n_frames, n_logmel = len(ex["faces"]), len(ex["logmel"])
    faces, mask = batch["faces"][i, :, 0, 0, 0], batch["face_mask"][i]
    if n_frames <= 4:  # every frame, then zero padding with mask 0
      np.testing.assert_array_equal(faces, np.pad(np.arange(n_frames), (0, 4 - n_frames)))
      np.testing.assert_array_equal(mask, np.arange(4) < n_frames)
    else:  # frame k of 4 is the centre of the k-th quarter of the clip; its mask comes along
      keep = np.floor((np.arange(4) + 0.5) * n_frames / 4).astype(int)
      np.testing.assert_array_equal(faces, keep)
      np.testing.assert_array_equal(mask, ex["face_mask"][keep])
    logmel, logmel_mask = batch["logmel"][i, :, 0], batch["logmel_mask"][i]
    if n_logmel <= 12:
      np.testing.assert_array_equal(logmel, np.pad(np.arange(n_logmel), (0, 12 - n_logmel)))
      np.testing.assert_array_equal(logmel_mask, np.arange(12) < n_logmel)
    else:  # the centre 12 frames
      start = (n_logmel - 12) // 2
      np.testing.assert_array_equal(logmel, np.arange(start, start + 12))
      assert logmel_mask.all()


def test_evaluation_visits_every_example_once_and_pads_the_last_batch(toy):
  split = ip.open_split(toy, "kd_mh_toy", "validation")
  batches = list(_batches(split, train=False, batch_size=2))
  assert len(batches) == 3
  assert [b["example_mask"].tolist() for b in batches] == [[True, True]] * 2 + [[True, False]]
  real = np.concatenate([b["index"][b["example_mask"]] for b in batches])
  np.testing.assert_array_equal(real, np.arange(5))
  labels = np.concatenate([b["label"][b["example_mask"]] for b in batches])
  np.testing.assert_array_equal(np.sort(labels), np.arange(5))


def test_training_epochs_are_seeded_permutations_of_whole_batches(train_split):
  batches = _batches(train_split)
  assert batches.batches_per_epoch == 3  # 13 // 4: the last, partial batch of an epoch is dropped
  epochs = [np.concatenate([b["index"] for b in _take(batches, 3)]) for _ in range(2)]
  for epoch, seen in enumerate(epochs):
    assert len(set(seen.tolist())) == 12
    np.testing.assert_array_equal(seen, ip.epoch_order(13, 0, epoch)[:12])
  assert not np.array_equal(epochs[0], epochs[1])
  assert batches.position == ip.Position(epoch=2, batch=0)
  again = np.concatenate([b["index"] for b in _take(_batches(train_split), 3)])
  np.testing.assert_array_equal(again, epochs[0])
  other_seed = np.concatenate([b["index"] for b in _take(_batches(train_split, seed=1), 3)])
  assert not np.array_equal(other_seed, epochs[0])
  assert all(b["example_mask"].all() for b in _take(_batches(train_split), 3))


@pytest.mark.parametrize("stop", [1, 3, 4])  # within an epoch, at its end, into the next one
def test_a_restored_pipeline_continues_with_the_same_batches(train_split, stop):
  uninterrupted = _take(_batches(train_split), 7)
  first = _batches(train_split)
  _take(first, stop)
  position = ip.Position.from_dict(first.position.to_dict())  # as a checkpoint stores it
  resumed = _take(_batches(train_split, position=position), 7 - stop)
  _assert_same(resumed, uninterrupted[stop:])


def test_processes_split_each_global_batch_between_them(train_split):
  whole = _take(_batches(train_split), 4)
  parts = [_take(_batches(train_split, process_index=p, process_count=2), 4) for p in range(2)]
  for b, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][b][key], parts[1][b][key]]), batch[key], err_msg=key)
  assert parts[0][0]["label"].shape == (2,)


def test_bad_arguments_fail_fast(train_split):
  with pytest.raises(ValueError, match="fewer than one batch"):
    _batches(train_split, batch_size=16)
  with pytest.raises(ValueError, match="multiple of the 3 processes"):
    _batches(train_split, batch_size=4, process_count=3)
  with pytest.raises(ValueError, match="outside an epoch"):
    _batches(train_split, position=ip.Position(0, 3))


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
  """A speech corpus without faces (labels 0, 1, 2, 5) and a face corpus: clip j (label j % 3,
  the one of label 2 without a face) whose faces are all 100 + j."""
  out = tmp_path_factory.mktemp("paired")
  speech = [_example(f"train/u{i}", "train", label, voice_label=label, n_frames=0)
            for i, label in enumerate([0, 1, 2, 5, 0, 1, 2, 5])]
  faces = [_example(f"train/f{j}", "train", j % 3, face_label=j % 3, n_frames=3,
                    face_value=100 + j, masked_frames=(0, 1, 2) if j == 2 else ())
           for j in range(6)]
  return (ip.open_split(_write_corpus(out / "speech", "speech", speech), "kd_mh_speech", "train"),
          ip.open_split(_write_corpus(out / "faces", "faces", faces), "kd_mh_faces", "train"))


def test_pseudo_pairing_borrows_faces_of_the_same_label(paired):
  speech, faces = paired
  assert not speech.has_face.any()
  batches = _batches(speech, batch_size=8, pair_with=faces)
  for _ in range(3):  # epochs draw new partners, always of the utterance's label
    batch = next(batches)
    for row in range(8):
      label = batch["label"][row]
      if label == 5:  # no face clip has this label
        assert not batch["face_mask"][row].any()
        continue
      assert batch["face_mask"][row, :3].all() and not batch["face_mask"][row, 3:].any()
      lender = int(batch["faces"][row, 0, 0, 0, 0]) - 100
      assert lender % 3 == label and lender != 2  # clip 2 has no face to lend
  partners = [ip.pair_faces(speech, faces, seed=0, epoch=e) for e in range(4)]
  np.testing.assert_array_equal(partners[0], ip.pair_faces(speech, faces, seed=0, epoch=0))
  assert any(not np.array_equal(partners[0], p) for p in partners[1:])
  assert (partners[0][speech.label == 5] == -1).all()


def test_a_native_class_set_labels_by_label_name(tmp_path):
  names = ["calm", "Neutral", "surprised", "boredom"]  # any case; boredom is not in the set
  examples = [dict(_example(f"train/n{i}", "train", label=6, face_label=6, voice_label=6),
                   label_name=name) for i, name in enumerate(names)]
  split = ip.open_split(_write_corpus(tmp_path, "native", examples), "kd_mh_native", "train")
  classes = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
  batch = next(_batches(split, train=False, classes=classes))
  order = batch["index"]
  np.testing.assert_array_equal(batch["label"], np.array([1, 0, 7, -1])[order])
  assert (batch["face_label"] == -1).all() and (batch["voice_label"] == -1).all()
  np.testing.assert_array_equal(next(_batches(split, train=False))["label"], [6, 6, 6, 6])
