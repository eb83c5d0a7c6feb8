"""Tests of kd_mh.losses against closed forms, SciPy and hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from kd_mh import losses
from kd_mh.emotions import NUM_CLASSES, UNLABELLED

RNG = np.random.default_rng(0)


def _logits(b=5, k=NUM_CLASSES, scale=2.0):
  return (scale * RNG.standard_normal((b, k))).astype(np.float32)


def _all(b):
  return np.ones(b, bool)


# --- distillation -------------------------------------------------------------------------------

def test_distillation_of_identical_logits_is_zero():
  t = _logits()
  assert float(losses.distillation(t, t, 2.0, _all(5))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distillation_matches_scipy_kl(temperature):
  s, t = _logits(), _logits()
  p_t = special.softmax(t / temperature, axis=-1)
  p_s = special.softmax(s / temperature, axis=-1)
  want = temperature ** 2 * np.mean(stats.entropy(p_t, p_s, axis=-1))
  got = losses.distillation(s, t, temperature, _all(5))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_distillation_two_class_case_by_hand():
  # Teacher logits (0, ln 3) -> p_t = (1/4, 3/4); student (0, 0) -> p_s = (1/2, 1/2).
  t = np.array([[0.0, np.log(3.0)]], np.float32)
  s = np.zeros((1, 2), np.float32)
  want = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
  np.testing.assert_allclose(float(losses.distillation(s, t, 1.0, _all(1))), want, rtol=1e-6)


def test_distillation_temperature_scaling():
  # Scaling both logits by T and softening by T gives the T = 1 KL, times T^2.
  s, t = _logits(), _logits()
  base = float(losses.distillation(s, t, 1.0, _all(5)))
  np.testing.assert_allclose(float(losses.distillation(3 * s, 3 * t, 3.0, _all(5))), 9 * base,
                             rtol=1e-5)


def test_distillation_gradient_closed_form():
  # d/ds [T^2 KL(p_t || p_s)] = T (p_s - p_t), divided by the number of valid examples.
  s, t, temperature = _logits(4), _logits(4), 2.5
  mask = np.array([1, 1, 0, 1], bool)
  grad = jax.grad(losses.distillation)(s, t, temperature, mask)
  want = temperature * (special.softmax(s / temperature, -1) - special.softmax(t / temperature, -1))
  want = want * mask[:, None] / mask.sum()
  np.testing.assert_allclose(np.asarray(grad), want, atol=1e-6)


def test_distillation_does_not_train_the_teacher():
  s, t = _logits(), _logits()
  grad_t = jax.grad(losses.distillation, argnums=1)(s, t, 2.0, _all(5))
  np.testing.assert_array_equal(np.asarray(grad_t), 0.0)


def test_distillation_masking_and_float_weights():
  s, t = _logits(4), _logits(4)
  mask = np.array([1, 0, 1, 0], bool)
  np.testing.assert_allclose(float(losses.distillation(s, t, 2.0, mask)),
                             float(losses.distillation(s[mask], t[mask], 2.0, _all(2))), rtol=1e-6)
  # Garbage in masked-out rows does not leak.
  s_bad = s.copy()
  s_bad[1] = np.nan
  np.testing.assert_allclose(float(losses.distillation(s_bad, t, 2.0, mask)),
                             float(losses.distillation(s, t, 2.0, mask)), rtol=1e-6)
  weights = np.array([1.0, 0.0, 3.0, 0.0], np.float32)
  per = [float(losses.distillation(s[i:i + 1], t[i:i + 1], 2.0, _all(1))) for i in (0, 2)]
  np.testing.assert_allclose(float(losses.distillation(s, t, 2.0, weights)),
                             (per[0] + 3 * per[1]) / 4, rtol=1e-5)


def test_distillation_handles_a_one_hot_teacher():
  t = np.array([[0.0, -np.inf, -np.inf]], np.float32)  # all mass on class 0
  s = np.array([[1.0, 2.0, 3.0]], np.float32)
  want = -np.log(special.softmax(s[0])[0])
  np.testing.assert_allclose(float(losses.distillation(s, t, 1.0, _all(1))), want, rtol=1e-6)
  assert np.isfinite(np.asarray(jax.grad(losses.distillation)(s, t, 1.0, _all(1)))).all()


# --- cosine alignment ---------------------------------------------------------------------------

def test_alignment_cosine_known_values():
  s = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0], [0.0, 3.0]], np.float32)
  t = np.array([[5.0, 0.0], [-1.0, 0.0], [1.0, 1.0], [1.0, 0.0]], np.float32)
  # Per example 1 - cos: identical direction 0, opposite 2, same direction (scaled) 0, orthogonal 1.
  np.testing.assert_allclose(float(losses.alignment_cosine(s, t, _all(4))), 3.0 / 4, atol=1e-6)
  np.testing.assert_allclose(float(losses.alignment_cosine(s, t, [0, 1, 0, 1])), 1.5, atol=1e-6)


def test_alignment_cosine_zero_vector_is_finite():
  s = np.zeros((2, 3), np.float32)
  t = np.ones((2, 3), np.float32)
  assert float(losses.alignment_cosine(s, t, _all(2))) == pytest.approx(1.0)
  assert np.isfinite(np.asarray(jax.grad(losses.alignment_cosine)(s, t, _all(2)))).all()


# --- InfoNCE ------------------------------------------------------------------------------------

def _info_nce_numpy(s, t, temperature, symmetric):
  s = s / np.linalg.norm(s, axis=-1, keepdims=True)
  t = t / np.linalg.norm(t, axis=-1, keepdims=True)
  logits = s @ t.T / temperature
  idx = np.arange(len(s))
  s2t = -special.log_softmax(logits, axis=1)[idx, idx].mean()
  t2s = -special.log_softmax(logits, axis=0)[idx, idx].mean()
  return 0.5 * (s2t + t2s) if symmetric else s2t


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_matches_numpy(symmetric):
  s, t = _logits(6, 8), _logits(6, 8)
  got = losses.info_nce(s, t, 0.2, _all(6), symmetric=symmetric)
  np.testing.assert_allclose(float(got), _info_nce_numpy(s, t, 0.2, symmetric), rtol=1e-5)


def test_info_nce_two_examples_by_hand():
  # Orthonormal pairs: cos = 1 on the diagonal, 0 off it, so each row is log(1 + e^{-1/T}).
  s = t = np.eye(2, dtype=np.float32)
  want = np.log(1 + np.exp(-1 / 0.5))
  np.testing.assert_allclose(float(losses.info_nce(s, t, 0.5, _all(2))), want, rtol=1e-6)


def test_info_nce_lower_when_matched_than_shuffled():
  t = _logits(8, 16)
  s = t + 0.1 * _logits(8, 16)
  matched = float(losses.info_nce(s, t, 0.1, _all(8)))
  shuffled = float(losses.info_nce(s[np.roll(np.arange(8), 1)], t, 0.1, _all(8)))
  assert matched < 0.1 < np.log(8) < shuffled


def test_info_nce_masked_examples_are_neither_anchor_nor_candidate():
  s, t = _logits(6, 8), _logits(6, 8)
  mask = np.array([1, 0, 1, 1, 0, 1], bool)
  s_bad = s.copy()
  s_bad[~mask] = np.nan
  got = float(losses.info_nce(s_bad, t, 0.2, mask))
  np.testing.assert_allclose(got, _info_nce_numpy(s[mask], t[mask], 0.2, True), rtol=1e-5)


# --- cross-entropy ------------------------------------------------------------------------------

def test_cross_entropy_by_hand_and_unlabelled_rows():
  logits = _logits(4)
  labels = np.array([2, UNLABELLED, 0, 6])
  mask = np.array([1, 1, 1, 0], bool)  # example 3 is padding, example 1 unlabelled
  log_p = special.log_softmax(logits, axis=-1)
  want = -(log_p[0, 2] + log_p[2, 0]) / 2
  np.testing.assert_allclose(float(losses.cross_entropy(logits, labels, mask)), want, rtol=1e-6)


def test_cross_entropy_uniform_logits_is_log_k():
  logits = np.zeros((3, NUM_CLASSES), np.float32)
  np.testing.assert_allclose(float(losses.cross_entropy(logits, [0, 3, 6], _all(3))),
                             np.log(NUM_CLASSES), rtol=1e-6)


# --- total and empty masks ----------------------------------------------------------------------

def _batch(b=4, d=8):
  return dict(student_logits=_logits(b), student_aligned=_logits(b, d),
              teacher_logits=_logits(b), teacher_embedding=_logits(b, d))


@pytest.mark.parametrize("alignment", ["cosine", "info_nce"])
def test_total_loss_is_the_weighted_sum(alignment):
  x = _batch()
  labels = np.array([1, UNLABELLED, 4, 0])
  mask = np.array([1, 1, 1, 0], bool)
  teacher_mask = np.array([1, 0, 1, 1], bool)
  loss, terms = losses.total_loss(**x, labels=labels, mask=mask, kd_weight=0.5, align_weight=2.0,
                                  ce_weight=3.0, temperature=2.0, alignment=alignment,
                                  nce_temperature=0.2, teacher_mask=teacher_mask)
  kd_mask = mask & teacher_mask
  kd = losses.distillation(x["student_logits"], x["teacher_logits"], 2.0, kd_mask)
  if alignment == "cosine":
    align = losses.alignment_cosine(x["student_aligned"], x["teacher_embedding"], kd_mask)
  else:
    align = losses.info_nce(x["student_aligned"], x["teacher_embedding"], 0.2, kd_mask)
  ce = losses.cross_entropy(x["student_logits"], labels, mask)
  for name, want in (("kd", kd), ("align", align), ("ce", ce)):
    np.testing.assert_allclose(float(terms[name]), float(want), rtol=1e-6)
  np.testing.assert_allclose(float(loss), 0.5 * kd + 2.0 * align + 3.0 * ce, rtol=1e-6)
  assert float(terms["loss"]) == float(loss)


def test_total_loss_rejects_unknown_alignment():
  with pytest.raises(ValueError, match="alignment"):
    losses.total_loss(**_batch(), labels=np.zeros(4, int), mask=_all(4), kd_weight=1.0,
                      align_weight=1.0, ce_weight=1.0, temperature=1.0, alignment="l2")


@pytest.mark.parametrize("alignment", ["cosine", "info_nce"])
def test_empty_masks_give_zero_and_finite_gradients(alignment):
  x = _batch()

  def loss_fn(student_logits, student_aligned, mask, labels):
    return losses.total_loss(student_logits, student_aligned, x["teacher_logits"],
                             x["teacher_embedding"], labels, mask, kd_weight=1.0,
                             align_weight=1.0, ce_weight=1.0, temperature=2.0,
                             alignment=alignment)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
  # No valid example at all.
  (loss, terms), grads = grad_fn(x["student_logits"], x["student_aligned"], np.zeros(4, bool),
                                 np.array([0, 1, 2, 3]))
  assert float(loss) == 0.0 and all(float(v) == 0.0 for v in terms.values())
  for g in grads:
    np.testing.assert_array_equal(np.asarray(g), 0.0)
  # Valid examples, but none labelled: CE is 0, the other terms are not, gradients finite.
  (loss, terms), grads = grad_fn(x["student_logits"], x["student_aligned"], _all(4),
                                 np.full(4, UNLABELLED))
  assert float(terms["ce"]) == 0.0 and float(terms["kd"]) > 0 and float(terms["align"]) > 0
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  assert np.abs(np.asarray(grads[0])).sum() > 0


def test_losses_are_float32_scalars_from_bfloat16_inputs():
  s = jnp.asarray(_logits(), jnp.bfloat16)
  t = jnp.asarray(_logits(), jnp.bfloat16)
  values = (losses.distillation(s, t, 2.0, _all(5)), losses.alignment_cosine(s, t, _all(5)),
            losses.info_nce(s, t, 0.1, _all(5)), losses.cross_entropy(s, np.arange(5), _all(5)))
  for value in values:
    assert value.shape == () and value.dtype == jnp.float32 and np.isfinite(float(value))


def test_folded_probabilities_sum_the_classes_of_each_target():
  logits = jnp.array([[0.5, -1.0, 2.0, 0.0]])
  class_map = (1, 0, 1, 2)  # classes 0 and 2 both count as target 1
  p = np.asarray(jax.nn.softmax(logits))[0]
  folded = np.exp(np.asarray(losses.fold_log_probs(logits, class_map, 3)))[0]
  np.testing.assert_allclose(folded, [p[1], p[0] + p[2], p[3]], rtol=1e-6)
  with pytest.raises(ValueError, match="class_map has 3 entries for 4 classes"):
    losses.fold_log_probs(logits, (0, 1, 2), 3)


def test_distillation_of_a_finer_student_is_the_kl_of_its_folded_distribution():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(5, 8)), rng.normal(size=(5, 7))
  class_map = (6, 6, 3, 4, 0, 2, 1, 5)  # RAVDESS's eight onto the seven (calm as neutral)
  t = 2.0
  p_t = np.asarray(jax.nn.softmax(teacher / t))
  p_s = np.zeros((5, 7))
  np.add.at(p_s.T, list(class_map), np.asarray(jax.nn.softmax(student / t)).T)
  expected = t * t * np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1))
  got = losses.distillation(jnp.asarray(student), jnp.asarray(teacher), t, jnp.ones(5), class_map)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  grads = jax.grad(lambda s: losses.distillation(s, jnp.asarray(teacher), t, jnp.ones(5),
                                                 class_map))(jnp.asarray(student))
  assert np.isfinite(np.asarray(grads)).all()
