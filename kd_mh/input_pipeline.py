"""Prepared corpora (tfds TFRecord shards) -> fixed-shape, masked NumPy batches with exact resume.

A split is opened as a random-access index over its TFRecord shards (`open_split`): the byte
offset of every record plus the few fields that decide ordering and pairing (labels, whether the
clip has a face). Each epoch's order is a permutation drawn from (seed, epoch), so the position
(epoch, batch) is all a checkpoint needs: a restored `Batches` continues with exactly the batches
an uninterrupted run would have seen, without replaying the consumed ones. tf.data does the heavy
part (parsing, zlib decoding of faces, padding) in parallel and deterministically.

Every batch is a dict of arrays with a leading example axis of the per-process batch size:
  faces         uint8 [B, max_frames, S, S, C]  the speaker's face, frames uniformly subsampled
                when the clip is longer than max_frames, zero-padded when shorter; from a corpus
                stored as embeddings, face_logits [B, max_frames, K] and face_embedding
                [B, max_frames, D] (the teacher's frame outputs) instead
  face_mask     bool [B, max_frames]            frames that hold a face
  logmel        float32 [B, max_logmel_frames, M]  centre crop when longer, zero-padded when shorter
  logmel_mask   bool [B, max_logmel_frames]
  label, face_label, voice_label  int32 [B]     as prepared; UNLABELLED (-1) where absent. With
                `classes` (a corpus's native class set, e.g. RAVDESS's eight), label is the
                position of the example's label_name among them and the per-modality labels
                are UNLABELLED
  example_mask  bool [B]                        False for the padding examples of a last batch
  index         int32 [B]                       the example's position in its split

Training batches cycle forever over reshuffled epochs (an epoch is the largest whole number of
global batches); evaluation batches visit every example once, in order, the last batch padded.

Pseudo-pairing: a speech corpus without faces (RAVDESS) can borrow face frames from a face corpus.
Each utterance gets, per epoch, the faces of a clip drawn (from the seed) among the face corpus's
clips with the utterance's label, so the teacher can give soft targets for it. An utterance with
no such face clip keeps an empty face mask.

Multi-host: every process builds the same global batches and keeps its own contiguous slice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from typing import Any, Iterator, Optional

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from kd_mh import records
from kd_mh.emotions import NUM_CLASSES
from kd_mh.emotions import UNLABELLED

# Fields read to build a batch, besides the face fields of the corpus's store
# (`records.face_fields`); the rest of the schema (ids, timestamps, isolation stats) is not.
_BATCH_FIELDS = ("face_mask", "logmel", "logmel_mask", "label", "face_label", "voice_label")
_INDEX_FIELDS = ("label", "face_label", "voice_label", "face_mask")
_TFRECORD_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_TFRECORD_FOOTER = 4  # uint32 masked CRC of the data


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a training stream stands: the next batch is batch `batch` of epoch `epoch`."""
  epoch: int = 0
  batch: int = 0

  def to_dict(self) -> dict[str, int]:
    return {"epoch": self.epoch, "batch": self.batch}

  @classmethod
  def from_dict(cls, d: Any) -> "Position":
    return cls(epoch=int(d["epoch"]), batch=int(d["batch"]))


def target_labels(label: np.ndarray, modality_label: np.ndarray) -> np.ndarray:
  """The label a modality's model learns: its own label (face_label / voice_label) where the corpus
  has one, else the clip's label. Works on NumPy and JAX arrays."""
  return label * (modality_label < 0) + modality_label * (modality_label >= 0)


@dataclasses.dataclass(frozen=True)
class Split:
  """Random access to one split of a prepared corpus.

  Attributes:
    name: tfds name and split, for messages ("kd_mh_demo/train").
    features: the corpus's schema (`kd_mh.records.features`).
    metadata: the corpus's tfds metadata (`kd_mh.records.embeddings_metadata` for a corpus stored
      as embeddings, else empty).
    paths: the TFRecord shards, in tfds order.
    shard, offset, length: per record, its shard number and the byte range of its data.
    label, face_label, voice_label: per record, as prepared.
    has_face: per record, whether any frame holds a face.
  """
  name: str
  features: tfds.features.FeaturesDict
  metadata: dict[str, Any]
  paths: tuple[str, ...]
  shard: np.ndarray
  offset: np.ndarray
  length: np.ndarray
  label: np.ndarray
  face_label: np.ndarray
  voice_label: np.ndarray
  has_face: np.ndarray

  def __len__(self) -> int:
    return len(self.offset)


def _scan_tfrecord(path: epath.Path) -> tuple[list[int], list[int]]:
  """Byte offsets and lengths of the records of one (uncompressed) TFRecord file."""
  offsets, lengths = [], []
  size = path.stat().length
  with path.open("rb") as f:
    position = 0
    while position < size:
      f.seek(position)
      header = f.read(_TFRECORD_HEADER)
      if len(header) != _TFRECORD_HEADER:
        raise ValueError(f"{path}: truncated TFRecord header at byte {position}")
      (length,) = struct.unpack("<Q", header[:8])
      offsets.append(position + _TFRECORD_HEADER)
      lengths.append(length)
      position += _TFRECORD_HEADER + length + _TFRECORD_FOOTER
    if position != size:
      raise ValueError(f"{path}: truncated TFRecord (last record ends at {position}, file has "
                       f"{size} bytes)")
  return offsets, lengths


def _subset(feats: tfds.features.FeaturesDict, names: tuple[str, ...]):
  """A schema of some fields only: parsing with it skips (and never decodes) the others."""
  return tfds.features.FeaturesDict({name: feats[name] for name in names})


def open_split(data_dir: str, name: str, split: str) -> Split:
  """Indexes `split` of the prepared corpus `tfds.load(name, data_dir=data_dir)` would load."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"no prepared corpus {name!r} under {data_dir!r} (expected "
                     f"{data_dir}/{name}/<version>/, as written by `kd-mh prep --out=OUT` to "
                     "OUT/tfds)") from None
  if split not in builder.info.splits:
    raise ValueError(f"{name} at {data_dir} has no split {split!r}; it has "
                     f"{', '.join(builder.info.splits.keys())}")
  info = builder.info.splits[split]
  paths = [epath.Path(p) for p in info.filepaths]
  shard, offset, length = [], [], []
  for i, (path, expected) in enumerate(zip(paths, info.shard_lengths)):
    offsets, lengths = _scan_tfrecord(path)
    if len(offsets) != expected:
      raise ValueError(f"{path}: {len(offsets)} records, the metadata says {expected}")
    shard += [i] * len(offsets)
    offset += offsets
    length += lengths
  feats = builder.info.features
  parse = _subset(feats, _INDEX_FIELDS).deserialize_example
  fields = {k: [] for k in ("label", "face_label", "voice_label", "has_face")}
  ds = tf.data.TFRecordDataset([str(p) for p in paths]).map(parse)
  for example in ds.as_numpy_iterator():
    for k in ("label", "face_label", "voice_label"):
      fields[k].append(example[k])
    fields["has_face"].append(bool(example["face_mask"].any()))
  return Split(
      name=f"{name}/{split}", features=feats, metadata=dict(builder.info.metadata or {}),
      paths=tuple(str(p) for p in paths),
      shard=np.asarray(shard, np.int64), offset=np.asarray(offset, np.int64),
      length=np.asarray(length, np.int64),
      **{k: np.asarray(v, bool if k == "has_face" else np.int32) for k, v in fields.items()})


def read_field(split: Split, name: str) -> np.ndarray:
  """One field of every example of `split`, in split order (the order of `Batches` with
  train=False and of `kd_mh.inference.predict`); text fields come back as str, and a field whose
  shape varies between examples (logmel) as an object array of arrays."""
  if name not in split.features:
    raise ValueError(f"{split.name} has no field {name!r}")
  parse = _subset(split.features, (name,)).deserialize_example
  ds = tf.data.TFRecordDataset(list(split.paths)).map(parse)
  values = [example[name] for example in ds.as_numpy_iterator()]
  if values and isinstance(values[0], bytes):
    return np.asarray([v.decode("utf-8") for v in values], dtype=object)
  if len({np.shape(v) for v in values}) > 1:
    ragged = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
      ragged[i] = v
    return ragged
  return np.asarray(values)


def pair_candidates(faces: Split) -> list[np.ndarray]:
  """Per class, the face-corpus records that can lend faces: labelled with it, with a face."""
  face_target = target_labels(faces.label, faces.face_label)
  return [np.flatnonzero((face_target == k) & faces.has_face) for k in range(NUM_CLASSES)]


def pair_faces(speech: Split, faces: Split, seed: int, epoch: int) -> np.ndarray:
  """Per speech record, the face record it borrows faces from this epoch, or -1 for none.

  The face clip is drawn uniformly among the face corpus's clips with the utterance's label
  (voice_label where the corpus has one), from (seed, epoch) only.
  """
  candidates = pair_candidates(faces)
  wanted = target_labels(speech.label, speech.voice_label)
  draws = np.random.default_rng([seed, epoch, 1]).random(len(speech))
  partner = np.full(len(speech), -1, np.int64)
  for k, pool in enumerate(candidates):
    rows = np.flatnonzero(wanted == k)
    if len(pool) and len(rows):
      partner[rows] = pool[(draws[rows] * len(pool)).astype(np.int64)]
  return partner


def _fit_frames(frames: dict[str, tf.Tensor], mask: tf.Tensor, max_frames: int):
  """Per-frame fields [T, ...] and their mask [T] -> [max_frames, ...]: uniform subsampling when
  longer, zero padding when shorter.

  Frame i of the n = min(T, max_frames) kept is the one at the centre of the i-th of n equal
  stretches of the clip; when T <= max_frames that is frame i itself.
  """
  t = tf.shape(mask)[0]
  n = tf.minimum(t, max_frames)
  keep = tf.cast(tf.math.floor((tf.cast(tf.range(n), tf.float64) + 0.5)
                               * tf.cast(t, tf.float64) / tf.cast(tf.maximum(n, 1), tf.float64)),
                 tf.int32)
  pad = max_frames - n
  fit = lambda x: tf.pad(tf.gather(x, keep), [[0, pad]] + [[0, 0]] * (len(x.shape) - 1))
  return {k: fit(v) for k, v in frames.items()}, fit(mask)


def _fit_logmel(logmel: tf.Tensor, mask: tf.Tensor, max_frames: int):
  """[F, M] -> [max_frames, M]: the centre max_frames when longer, zero padding when shorter."""
  f = tf.shape(logmel)[0]
  start = tf.maximum(f - max_frames, 0) // 2
  logmel, mask = logmel[start:start + max_frames], mask[start:start + max_frames]
  pad = max_frames - tf.shape(logmel)[0]
  return tf.pad(logmel, [[0, pad], [0, 0]]), tf.pad(mask, [[0, pad]])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order of a split's n records in training epoch `epoch`: a permutation of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How a stream of records is cut into this process's examples."""
  seed: int
  train: bool
  batch_size: int  # global
  local_batch_size: int
  process_index: int
  batches_per_epoch: int


def _elements(split: Split, pair: Optional[Split], layout: _Layout,
              start: Position) -> Iterator[tuple]:
  """This process's examples from `start` on: (record, face record, paired, real, index).

  Padding examples (`real` False) repeat a real record, so they parse like any other.
  """
  lo = layout.process_index * layout.local_batch_size
  epoch, first = start.epoch, start.batch
  with contextlib.ExitStack() as stack:
    files = {}

    def read(source: Split, i: int) -> bytes:
      path = source.paths[source.shard[i]]
      if path not in files:
        files[path] = stack.enter_context(epath.Path(path).open("rb"))
      f = files[path]
      f.seek(int(source.offset[i]))
      return f.read(int(source.length[i]))

    while True:
      order = (epoch_order(len(split), layout.seed, epoch) if layout.train
               else np.arange(len(split)))
      partner = pair_faces(split, pair, layout.seed, epoch) if pair is not None else None
      for b in range(first, layout.batches_per_epoch):
        for slot in range(b * layout.batch_size + lo,
                          b * layout.batch_size + lo + layout.local_batch_size):
          real = slot < len(order)
          i = int(order[slot]) if real else int(order[0])
          if partner is None:
            yield read(split, i), b"", False, real, i
          else:
            j = int(partner[i])
            yield read(split, i), read(pair, max(j, 0)), j >= 0, real, i
      if not layout.train:
        return
      epoch, first = epoch + 1, 0


def _native_labels(classes: tuple[str, ...]):
  """label_name (any case) -> its position in `classes`, UNLABELLED for other names."""
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant([c.lower() for c in classes]),
                                          tf.range(len(classes), dtype=tf.int32)),
      default_value=UNLABELLED)
  return lambda name: table.lookup(tf.strings.lower(tf.strings.strip(name)))


def _dataset(split: Split, pair: Optional[Split], layout: _Layout, start: Position,
             max_frames: int, max_logmel_frames: int, num_parallel_calls: int,
             classes: Optional[tuple[str, ...]]) -> tf.data.Dataset:
  """The tf.data pipeline of `_elements`: parse, fit to the fixed shapes, batch."""
  # The face fields come from the face corpus when faces are borrowed, else from the split.
  face_fields = records.face_fields((pair or split).features)
  fields = _BATCH_FIELDS + (("label_name",) if classes else ())
  if pair is None:
    fields += face_fields
  parse = _subset(split.features, fields).deserialize_example
  native_label = _native_labels(classes) if classes else None
  parse_faces = (_subset(pair.features, face_fields + ("face_mask",)).deserialize_example
                 if pair is not None else None)

  def prepare(record, face_record, paired, real, index):
    ex = parse(record)
    if parse_faces is not None:
      borrowed = parse_faces(face_record)
      ex.update({k: borrowed[k] for k in face_fields})
      ex["face_mask"] = tf.logical_and(borrowed["face_mask"], paired)
    frames, face_mask = _fit_frames({k: ex[k] for k in face_fields}, ex["face_mask"], max_frames)
    logmel, logmel_mask = _fit_logmel(ex["logmel"], ex["logmel_mask"], max_logmel_frames)
    labels = {k: tf.cast(ex[k], tf.int32) for k in ("label", "face_label", "voice_label")}
    if native_label is not None:
      labels = {"label": native_label(ex["label_name"]),
                "face_label": tf.constant(UNLABELLED, tf.int32),
                "voice_label": tf.constant(UNLABELLED, tf.int32)}
    return {
        **frames, "face_mask": face_mask, "logmel": logmel, "logmel_mask": logmel_mask,
        **labels, "example_mask": real, "index": tf.cast(index, tf.int32),
    }

  signature = (tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.string),
               tf.TensorSpec((), tf.bool), tf.TensorSpec((), tf.bool),
               tf.TensorSpec((), tf.int64))
  ds = tf.data.Dataset.from_generator(lambda: _elements(split, pair, layout, start),
                                      output_signature=signature)
  ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.batch(layout.local_batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(2)


class Batches:
  """An iterator of fixed-shape NumPy batches over one split, for this process.

  Args:
    split: the split to read (`open_split`).
    batch_size: the global batch size (all processes together).
    max_frames: face frames per example.
    max_logmel_frames: log-mel frames per example.
    seed: seeds the epoch permutations and the pseudo-pairing.
    train: True: reshuffled epochs forever, whole global batches only. False: one pass in split
      order, the last batch padded (`example_mask` False), nothing dropped.
    position: where to start (training only); `Batches.position` of a stopped run resumes it.
    pair_with: a face corpus split to borrow faces from (pseudo-pairing); None: the split's own.
      The face fields of the batches are then the face corpus's (its store and face size).
    process_index, process_count: this process's slice of each global batch.
    num_parallel_calls: tf.data parallelism of parsing and padding (-1: autotune).
    classes: label by these class names (matched against label_name, case-insensitively)
      instead of the prepared 7-class label; None: the prepared labels.
  """

  def __init__(self, split: Split, *, batch_size: int, max_frames: int, max_logmel_frames: int,
               seed: int, train: bool, position: Position = Position(),
               pair_with: Optional[Split] = None, process_index: int = 0, process_count: int = 1,
               num_parallel_calls: int = tf.data.AUTOTUNE,
               classes: Optional[tuple[str, ...]] = None):
    if batch_size < 1 or batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} must be a positive multiple of the "
                       f"{process_count} processes")
    if len(split) == 0:
      raise ValueError(f"{split.name} is empty")
    if train and len(split) < batch_size:
      raise ValueError(f"{split.name} has {len(split)} examples, fewer than one batch of "
                       f"batch_size {batch_size}")
    if not train and position != Position():
      raise ValueError("an evaluation pass always starts at the beginning")
    self.train = train
    self.batches_per_epoch = (len(split) // batch_size if train
                              else -(-len(split) // batch_size))
    if position.batch >= self.batches_per_epoch or min(position.epoch, position.batch) < 0:
      raise ValueError(f"position {position} is outside an epoch of {self.batches_per_epoch} "
                       "batches")
    layout = _Layout(seed=seed, train=train, batch_size=batch_size,
                     local_batch_size=batch_size // process_count, process_index=process_index,
                     batches_per_epoch=self.batches_per_epoch)
    self._position = position
    self._iterator = _dataset(split, pair_with, layout, position, max_frames, max_logmel_frames,
                              num_parallel_calls, classes).as_numpy_iterator()

  @property
  def position(self) -> Position:
    """The position of the next batch `next()` returns."""
    return self._position

  def __iter__(self) -> "Batches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    epoch, b = self._position.epoch, self._position.batch + 1
    if b == self.batches_per_epoch and self.train:
      epoch, b = epoch + 1, 0
    self._position = Position(epoch, b)
    return batch


def example_count(split: Split) -> dict[str, int]:
  """Counts for a log line: examples, labelled ones, ones with a face."""
  return {"examples": len(split), "labelled": int((split.label != UNLABELLED).sum()),
          "with_face": int(split.has_face.sum())}
