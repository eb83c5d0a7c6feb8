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


@functools.partial(jax.jit, static_argnums=(0, 2))
def _outputs(model: nn.Module, variables: Any, teacher: Optional[nn.Module],
             teacher_variables: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  out = {}
  if teacher is not None:
    t = teacher.apply(teacher_variables, batch["faces"], batch["face_mask"], train=False)
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
