"""The student's training losses: distillation, embedding alignment and supervised terms.

Every function is pure and masked: it takes per-example inputs with a leading batch axis and a
mask [B] (bool, or non-negative float weights), and returns the mean over the valid examples as a
float32 scalar. A term with no valid example is 0 (with zero gradients), never NaN, so padded
global batches and batches without labels are safe under `jit`.

Teacher inputs (logits, embeddings) go through `jax.lax.stop_gradient`: the teacher is frozen,
and the losses say so themselves rather than relying on every caller to remember it.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import jax
import jax.numpy as jnp

from kd_mh.emotions import UNLABELLED

Array = jax.Array

# Logit given to invalid candidates in InfoNCE: finite, so a row with no valid candidate stays
# finite (it is excluded anyway), yet far below any cosine / temperature.
_EXCLUDED_LOGIT = -1e9


def _valid_mean(values: Array, mask: Array) -> Array:
  """Weighted mean of `values` [B] over `mask` [B]; 0 when the mask is empty.

  `jnp.where` (not a product) keeps non-finite values of masked-out examples out of the sum.
  """
  weights = jnp.asarray(mask, jnp.float32)
  values = jnp.where(weights > 0, values.astype(jnp.float32), 0.0)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def fold_log_probs(logits: Array, class_map: Sequence[int], num_targets: int) -> Array:
  """log_softmax(logits) summed onto coarser classes: [B, K] -> [B, num_targets].

  `class_map[j]` is the target class of class j (e.g. RAVDESS calm and neutral both onto
  neutral); the probability of a target class is the sum of its classes' probabilities. Every
  target class needs at least one class.
  """
  if len(class_map) != logits.shape[-1]:
    raise ValueError(f"class_map has {len(class_map)} entries for {logits.shape[-1]} classes")
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  member = jax.nn.one_hot(jnp.asarray(class_map), num_targets, dtype=jnp.bool_)  # [K, targets]
  return jax.nn.logsumexp(jnp.where(member, log_p[..., :, None], -jnp.inf), axis=-2)


def distillation(student_logits: Array, teacher_logits: Array, temperature: float,
                 mask: Array, class_map: Optional[Sequence[int]] = None) -> Array:
  """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over valid examples.

  The T^2 factor (Hinton et al., 2015) keeps the gradient scale, T * (p_s - p_t) per logit,
  comparable across temperatures.

  Args:
    student_logits: [B, K] (or [B, K'] with `class_map`).
    teacher_logits: [B, K].
    temperature: softening temperature T > 0.
    mask: [B] valid examples (e.g. those that have a teacher output).
    class_map: for a student with its own classes (e.g. RAVDESS's eight), the teacher class of
      each; the student's softened distribution is summed onto the teacher's classes
      (`fold_log_probs`) before the KL.
  """
  log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
                               / temperature, axis=-1)
  scaled = student_logits.astype(jnp.float32) / temperature
  log_p_s = (jax.nn.log_softmax(scaled, axis=-1) if class_map is None
             else fold_log_probs(scaled, class_map, teacher_logits.shape[-1]))
  p_t = jnp.exp(log_p_t)
  # 0 * log 0 = 0 where the teacher gives a class no mass.
  kl = jnp.sum(jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1)
  return temperature ** 2 * _valid_mean(kl, mask)


def _unit(x: Array, eps: float = 1e-8) -> Array:
  """x / ||x|| along the last axis; a zero vector stays zero."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def alignment_cosine(student_aligned: Array, teacher_embedding: Array, mask: Array) -> Array:
  """1 - cos(student_aligned, teacher_embedding), averaged over valid examples (range [0, 2]).

  Args:
    student_aligned: [B, D] the student's projection into the teacher's embedding space.
    teacher_embedding: [B, D].
    mask: [B] valid examples.
  """
  cos = jnp.sum(_unit(student_aligned) * _unit(jax.lax.stop_gradient(teacher_embedding)), axis=-1)
  return _valid_mean(1.0 - cos, mask)


def info_nce(student_aligned: Array, teacher_embedding: Array, temperature: float, mask: Array,
             symmetric: bool = True) -> Array:
  """In-batch contrastive alignment: student i must pick teacher i among the valid examples.

  Similarities are cosines divided by `temperature`. With `symmetric=True` (the default, as in
  CLIP) the loss is the mean of the student->teacher and teacher->student cross-entropies; with
  `symmetric=False` it is the student->teacher direction only (each student row classifies the
  teachers). Invalid examples are neither anchors nor candidates. Under `jit` with a sharded
  global batch the negatives are the whole global batch, so the value does not depend on the
  number of devices.

  Args:
    student_aligned: [B, D].
    teacher_embedding: [B, D].
    temperature: similarity temperature > 0 (e.g. 0.1).
    mask: [B] valid examples; weights other than 0/1 weight the anchors.
    symmetric: both directions (True) or student->teacher only (False).
  """
  s = _unit(student_aligned)
  t = _unit(jax.lax.stop_gradient(teacher_embedding))
  logits = (s @ t.T) / temperature  # [B_student, B_teacher]
  valid = jnp.asarray(mask, jnp.float32) > 0
  pair_valid = valid[:, None] & valid[None, :]
  logits = jnp.where(pair_valid, logits, _EXCLUDED_LOGIT)
  diagonal = jnp.diagonal(logits)
  student_to_teacher = jax.nn.logsumexp(logits, axis=1) - diagonal
  if not symmetric:
    return _valid_mean(student_to_teacher, mask)
  teacher_to_student = jax.nn.logsumexp(logits, axis=0) - diagonal
  return 0.5 * (_valid_mean(student_to_teacher, mask) + _valid_mean(teacher_to_student, mask))


def cross_entropy(logits: Array, labels: Array, mask: Array) -> Array:
  """Softmax cross-entropy with integer labels over valid, labelled examples.

  Args:
    logits: [B, K].
    labels: [B] class indices; negative values (`UNLABELLED`, -1) are left out.
    mask: [B] valid examples.
  """
  labels = jnp.asarray(labels)
  labelled = labels > UNLABELLED
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # Clip so unlabelled rows index a real class; they are masked out below.
  nll = -jnp.take_along_axis(log_p, jnp.clip(labels, 0, logits.shape[-1] - 1)[:, None],
                             axis=-1)[:, 0]
  return _valid_mean(nll, jnp.where(labelled, jnp.asarray(mask, jnp.float32), 0.0))


def total_loss(student_logits: Array, student_aligned: Array, teacher_logits: Array,
               teacher_embedding: Array, labels: Array, mask: Array, *,
               kd_weight: float, align_weight: float, ce_weight: float, temperature: float,
               alignment: Literal["cosine", "info_nce"] = "cosine",
               nce_temperature: float = 0.1,
               teacher_mask: Array | None = None,
               class_map: Optional[Sequence[int]] = None) -> tuple[Array, dict[str, Array]]:
  """kd_weight * KD + align_weight * alignment + ce_weight * CE, and the terms.

  Args:
    student_logits: [B, K] the student's logits.
    student_aligned: [B, D] the student's projection into the teacher's embedding space.
    teacher_logits: [B, K] the frozen teacher's logits.
    teacher_embedding: [B, D] the frozen teacher's embedding.
    labels: [B] class indices, `UNLABELLED` (-1) where there is no label.
    mask: [B] real (non-padding) examples.
    kd_weight, align_weight, ce_weight: weights of the three terms.
    temperature: distillation temperature.
    alignment: "cosine" (1 - cos per example) or "info_nce" (symmetric in-batch contrastive).
    nce_temperature: temperature of the InfoNCE similarities.
    teacher_mask: [B] examples the teacher saw (e.g. with at least one face frame); KD and
      alignment use mask & teacher_mask. None: every valid example.
    class_map: the teacher class of each student class when the two differ (`distillation`).

  Returns:
    (loss, {"kd", "align", "ce", "loss"}): float32 scalars; a term without valid examples is 0.
  """
  mask = jnp.asarray(mask, jnp.float32)
  kd_mask = mask if teacher_mask is None else mask * jnp.asarray(teacher_mask, jnp.float32)
  kd = distillation(student_logits, teacher_logits, temperature, kd_mask, class_map)
  if alignment == "cosine":
    align = alignment_cosine(student_aligned, teacher_embedding, kd_mask)
  elif alignment == "info_nce":
    align = info_nce(student_aligned, teacher_embedding, nce_temperature, kd_mask)
  else:
    raise ValueError(f"alignment must be 'cosine' or 'info_nce', got {alignment!r}")
  ce = cross_entropy(student_logits, labels, mask)
  loss = kd_weight * kd + align_weight * align + ce_weight * ce
  return loss, {"kd": kd, "align": align, "ce": ce, "loss": loss}
