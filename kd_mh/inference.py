"""Per-example outputs of a trained run on a prepared split: what evaluation and reports read.

  trained = train.load_trained(workdir)
  outputs = inference.predict(trained, input_pipeline.open_split(data_dir, name, "test"))

`predict` visits every example of the split once, in split order, and returns NumPy arrays with
one row per example:
  label, face_label, voice_label, index   as the training pipeline gives them (with the run's
                                          class set, `config.data.classes`)
  has_face, has_speech                    whether the example had any face frame / log-mel frame
  teacher_logits, teacher_embedding       the face model's outputs (teacher runs, and student runs,
                                          whose frozen teacher it is); rows without a face hold
                                          the outputs for an empty mask (finite, meaningless)
  student_logits, student_embedding, student_aligned   the speech model's outputs (student runs)

The teacher's outputs come from the faces, or, for a corpus stored as embeddings, are pooled from
the frame outputs it holds. `load_face_teacher` and `frame_outputs` make those frame outputs when
such a corpus is built.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_mh import input_pipeline
from kd_mh import train
from kd_mh.models import pretrained
from kd_mh.models import teacher as teacher_lib

FER2013 = "fer2013"  # the pretrained FER2013 teacher (`kd_mh.models.pretrained`)
FRAME_CHUNK = 32  # faces per teacher call in `frame_outputs`: one compilation for every clip


@functools.partial(jax.jit, static_argnums=(0, 2))
def _outputs(model: nn.Module, variables: Any, teacher: Optional[nn.Module],
             teacher_variables: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  out = {}
  if teacher is not None:
    t = train.teacher_outputs(teacher, teacher_variables, batch)
    out.update(teacher_logits=t["logits"], teacher_embedding=t["embedding"])
  if model is not teacher:
    s = model.apply(variables, batch["logmel"], batch["logmel_mask"], train=False)
    out.update(student_logits=s["logits"], student_embedding=s["embedding"],
               student_aligned=s["aligned"])
  return out


def predict(trained: train.Trained, split: input_pipeline.Split, batch_size: int = 32,
            pair_with: Optional[input_pipeline.Split] = None) -> dict[str, np.ndarray]:
  """Outputs of `trained` (and its teacher) on every example of `split`, in split order.

  Args:
    trained: a run restored by `train.load_trained`.
    split: the examples (`input_pipeline.open_split`).
    batch_size: examples per forward pass (the last batch is padded, and the padding dropped).
    pair_with: a face corpus split to borrow faces from (pseudo-pairing, with the run's seed).
  """
  config = trained.config
  # A corpus stored as embeddings stands in for the teacher: it must be this run's teacher.
  train.check_face_store(config, pair_with or split)
  if trained.config.mode == "teacher":
    teacher, teacher_variables = trained.model, trained.variables
  else:
    teacher, teacher_variables = trained.teacher, trained.teacher_variables
  batches = input_pipeline.Batches(
      split, batch_size=batch_size, max_frames=int(config.inputs.max_frames),
      max_logmel_frames=int(config.inputs.max_logmel_frames), seed=int(config.seed),
      train=False, pair_with=pair_with, num_parallel_calls=int(config.data.num_parallel_calls),
      classes=train.label_classes(config))
  rows: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    real = batch["example_mask"]
    out = jax.device_get(_outputs(trained.model, trained.variables, teacher, teacher_variables,
                                  {k: jnp.asarray(v) for k, v in batch.items()}))
    out.update({k: batch[k] for k in ("label", "face_label", "voice_label", "index")},
               has_face=batch["face_mask"].any(axis=1),
               has_speech=batch["logmel_mask"].any(axis=1))
    for key, value in out.items():
      rows.setdefault(key, []).append(np.asarray(value)[real])
  return {key: np.concatenate(parts) for key, parts in rows.items()}


@functools.lru_cache(maxsize=1)
def load_face_teacher(source: str, step: int = -1,
                      ) -> tuple[teacher_lib.Teacher, Any, tuple[int, int, int]]:
  """(Teacher, variables, input face shape) of `source`: FER2013 (the pretrained backbone), or a
  teacher run's workdir at checkpoint `step` (-1: the one `train.load_trained` picks).

  Cached: a corpus build's worker loads its teacher once, whatever number of clips it makes.
  """
  if source == FER2013:
    teacher = teacher_lib.Teacher()
    variables = pretrained.init_teacher_variables(teacher, jax.random.PRNGKey(0))
    return teacher, variables, (pretrained.INPUT_SIZE, pretrained.INPUT_SIZE, 1)
  trained = train.load_teacher_run(source, None if step < 0 else step)
  return (trained.model, trained.variables,
          tuple(int(v) for v in trained.config.inputs.face_shape))


@functools.partial(jax.jit, static_argnums=0)
def _frames(teacher: nn.Module, variables: Any, faces: jax.Array) -> dict[str, jax.Array]:
  mask = jnp.ones(faces.shape[:2], bool)
  return teacher.apply(variables, faces, mask, method=teacher_lib.Teacher.frames)


def frame_output_dims(teacher: teacher_lib.Teacher, variables: Any,
                      face_shape: tuple[int, int, int]) -> tuple[int, int]:
  """(classes K, embedding width D) of the teacher's frame outputs, from shapes alone."""
  shapes = jax.eval_shape(_frames, teacher, variables,
                          jax.ShapeDtypeStruct((1, 1) + tuple(face_shape), np.uint8))
  return shapes["frame_logits"].shape[-1], shapes["frame_embedding"].shape[-1]


def frame_outputs(teacher: teacher_lib.Teacher, variables: Any, faces: np.ndarray,
                  mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The teacher's frame logits [T, K] and embeddings [T, D] of faces [T, S, S, C] (float32;
  zeros where `mask` [T] has no face), what a corpus stored as embeddings keeps."""
  k, d = frame_output_dims(teacher, variables, faces.shape[1:])
  logits = np.zeros((len(faces), k), np.float32)
  embedding = np.zeros((len(faces), d), np.float32)
  rows = np.flatnonzero(mask)
  for start in range(0, len(rows), FRAME_CHUNK):
    chunk = rows[start:start + FRAME_CHUNK]
    batch = np.zeros((1, FRAME_CHUNK) + faces.shape[1:], np.uint8)
    batch[0, :len(chunk)] = faces[chunk]
    out = jax.device_get(_frames(teacher, variables, batch))
    logits[chunk] = out["frame_logits"][0, :len(chunk)]
    embedding[chunk] = out["frame_embedding"][0, :len(chunk)]
  return logits, embedding
