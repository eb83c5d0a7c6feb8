"""The one TFRecord schema of kd_mh: every field name lives here.

The schema is a `tfds.features.FeaturesDict`, so the same object serialises examples during a
corpus build, parses them back (in NumPy or in a tf.data graph) and is written next to the shards
as tfds metadata, which makes every prepared corpus loadable with `tfds.builder_from_directory`
or `tfds.load(name, data_dir=...)`.

One example is one clip (or one face image):
  identity      clip_id, corpus, speaker_id, split
  labels        label (7-class index, -1 unlabelled), label_name (the corpus's own name),
                label_source, face_label / voice_label (per-modality labels, -1 when absent)
  face track    faces [T, S, S, C] uint8 (the speaker's aligned face per sampled frame, zeros where
                there is none), face_timestamps [T] (s, video clock), face_mask [T]
                or, in a corpus stored as "embeddings" (privacy mode, no face pixels): the
                teacher's per-frame outputs face_logits [T, K] and face_embedding [T, D] float32
                (zeros where there is no face) in place of faces
  speech        logmel [F, M] float32 (natural-log mel energies, 10 ms hop), logmel_mask [F]
  clip facts    duration_s, fps (face sampling rate)
  isolation     speaker_method, speaker_tracks (ids of the chosen tracks), speaker_coverage,
                speaker_score, n_tracks
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
from tensorflow.core.example import example_pb2
import tensorflow_datasets as tfds

from kd_mh.emotions import NUM_CLASSES

_F = tfds.features

# How a corpus holds the speaker's face: its pixels, or the teacher's per-frame outputs only.
STORES = ("pixels", "embeddings")
# The per-frame face fields of each store, besides face_timestamps and face_mask.
FACE_FIELDS = {"pixels": ("faces",), "embeddings": ("face_logits", "face_embedding")}

# Scalar field -> dtype.
_SCALARS = {
    "label": np.int64, "face_label": np.int64, "voice_label": np.int64,
    "duration_s": np.float32, "fps": np.float32, "speaker_coverage": np.float32,
    "speaker_score": np.float32, "n_tracks": np.int64,
}
_TEXTS = ("clip_id", "corpus", "speaker_id", "split", "label_name", "label_source", "speaker_method")


def features(face_size: int = 64, face_channels: int = 1, n_mels: int = 64,
             store: str = "pixels", num_classes: int = NUM_CLASSES,
             embedding_dim: int = 128) -> _F.FeaturesDict:
  """The schema for faces of `face_size`^2 x `face_channels` and `n_mels`-bin log-mels.

  With store "embeddings" the faces are replaced by a teacher's frame logits [T, num_classes] and
  frame embeddings [T, embedding_dim] (the face size is then only kept in `metadata`).
  """
  if store not in STORES:
    raise ValueError(f"store must be one of {STORES}, got {store!r}")
  spec: dict[str, Any] = {name: _F.Text() for name in _TEXTS}
  spec.update({name: _F.Scalar(dtype) for name, dtype in _SCALARS.items()})
  if store == "pixels":
    spec["faces"] = _F.Tensor(shape=(None, face_size, face_size, face_channels), dtype=np.uint8,
                              encoding=_F.Encoding.ZLIB)
  else:
    spec["face_logits"] = _F.Tensor(shape=(None, num_classes), dtype=np.float32,
                                    encoding=_F.Encoding.BYTES)
    spec["face_embedding"] = _F.Tensor(shape=(None, embedding_dim), dtype=np.float32,
                                       encoding=_F.Encoding.BYTES)
  spec.update(
      face_timestamps=_F.Tensor(shape=(None,), dtype=np.float32),
      face_mask=_F.Tensor(shape=(None,), dtype=np.bool_),
      logmel=_F.Tensor(shape=(None, n_mels), dtype=np.float32, encoding=_F.Encoding.BYTES),
      logmel_mask=_F.Tensor(shape=(None,), dtype=np.bool_),
      speaker_tracks=_F.Tensor(shape=(None,), dtype=np.int64),
  )
  return _F.FeaturesDict(spec)


def store(feats: _F.FeaturesDict) -> str:
  """How a schema holds faces: "pixels" or "embeddings" (see STORES)."""
  return "pixels" if "faces" in feats.keys() else "embeddings"


def face_fields(feats: _F.FeaturesDict) -> tuple[str, ...]:
  """The per-frame face fields of a schema (besides face_timestamps and face_mask)."""
  return FACE_FIELDS[store(feats)]


def embeddings_metadata(teacher: str, teacher_step: int,
                        face_shape: tuple[int, int, int]) -> dict[str, Any]:
  """The tfds metadata of an "embeddings" corpus: which teacher made its frame outputs, from
  crops of which (size, size, channels)."""
  return {"store": "embeddings", "teacher": teacher, "teacher_step": int(teacher_step),
          "face_shape": [int(v) for v in face_shape]}


def face_shape(feats: _F.FeaturesDict,
               metadata: Optional[Mapping[str, Any]] = None) -> tuple[int, int, int]:
  """(size, size, channels) of the face crops a schema holds, or (store "embeddings") that the
  teacher saw, from the corpus's `metadata` (`embeddings_metadata`)."""
  if store(feats) == "pixels":
    return tuple(feats["faces"].shape[1:])
  if not metadata or "face_shape" not in metadata:
    raise ValueError("a corpus stored as embeddings needs its metadata (face_shape, teacher) "
                     "next to the shards; rebuild it with `kd-mh prep --store=embeddings`")
  return tuple(int(v) for v in metadata["face_shape"])


def n_mels(feats: _F.FeaturesDict) -> int:
  return feats["logmel"].shape[1]


def check_example(example: Mapping[str, Any], feats: _F.FeaturesDict) -> None:
  """Raises ValueError naming the field when `example` does not fit the schema."""
  missing = sorted(set(feats.keys()) - set(example))
  extra = sorted(set(example) - set(feats.keys()))
  if missing or extra:
    raise ValueError(f"example {example.get('clip_id', '?')!r}: missing fields {missing}, "
                     f"unknown fields {extra}")
  frames = face_fields(feats)
  t = len(example[frames[0]])
  for name in frames[1:] + ("face_timestamps", "face_mask"):
    if len(example[name]) != t:
      raise ValueError(f"example {example['clip_id']!r}: {name} has {len(example[name])} entries, "
                       f"{frames[0]} has {t}")
  if len(example["logmel_mask"]) != len(example["logmel"]):
    raise ValueError(f"example {example['clip_id']!r}: logmel_mask and logmel lengths differ")
  for name in frames + ("logmel",):
    want = feats[name].shape[1:]
    got = np.shape(example[name])[1:]
    if len(example[name]) and tuple(got) != tuple(want):
      raise ValueError(f"example {example['clip_id']!r}: {name} has shape {np.shape(example[name])}, "
                       f"schema wants (T, {', '.join(map(str, want))})")


def write_example(example: Mapping[str, Any], feats: _F.FeaturesDict) -> bytes:
  """Serialises one example (a dict of NumPy values / strings) to tf.train.Example bytes.

  The bytes are the same in every process: protobuf writes a map (the Example's feature map) in
  an order that varies between processes unless asked for its deterministic form.
  """
  check_example(example, feats)
  proto = example_pb2.Example.FromString(feats.serialize_example(dict(example)))
  return proto.SerializeToString(deterministic=True)


def parse_example(serialized: bytes, feats: _F.FeaturesDict) -> dict[str, Any]:
  """Parses tf.train.Example bytes back to NumPy values (text fields as str)."""
  parsed = feats.deserialize_example_np(serialized)
  return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in parsed.items()}


def parse_example_tf(serialized, feats: _F.FeaturesDict):
  """The same, as TensorFlow ops, for tf.data pipelines."""
  return feats.deserialize_example(serialized)
