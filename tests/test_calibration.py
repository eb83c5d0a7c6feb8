"""Tests of kd_mh.calibration on simulated classifiers with known calibration."""

import numpy as np
import pytest
from scipy import special

from kd_mh import calibration
from kd_mh.emotions import NUM_CLASSES, UNLABELLED

N = 20000


def _sample_labels(probs, rng):
  """One label per row drawn from that row's distribution."""
  u = rng.random(len(probs))[:, None]
  return np.minimum((u > np.cumsum(probs, axis=-1)).sum(-1), probs.shape[-1] - 1)


@pytest.fixture(scope="module")
def calibrated_logits():
  """Logits whose softmax is the true label distribution, and labels drawn from it."""
  rng = np.random.default_rng(0)
  logits = 1.5 * rng.standard_normal((N, NUM_CLASSES))
  return logits, _sample_labels(special.softmax(logits, axis=-1), rng)


def test_ece_of_calibrated_classifier_is_near_zero():
  rng = np.random.default_rng(1)
  probs = rng.dirichlet(np.ones(NUM_CLASSES), size=N)
  labels = _sample_labels(probs, rng)
  assert calibration.expected_calibration_error(probs, labels) < 0.02
  # The same probabilities against labels that ignore them are far off.
  random_labels = rng.integers(0, NUM_CLASSES, N)
  assert calibration.expected_calibration_error(probs, random_labels) > 0.2


def test_ece_by_hand():
  probs = np.array([[0.85, 0.15], [0.35, 0.65], [0.25, 0.75]])
  labels = np.array([0, 0, 1])
  # Ten bins: each row alone; gaps |1 - 0.85|, |0 - 0.65|, |1 - 0.75|.
  assert calibration.expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.35)
  # Two bins: all in (0.5, 1]; accuracy 2/3, mean confidence 0.75.
  assert calibration.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(
      0.75 - 2 / 3)


def test_reliability_diagram_data():
  probs = np.array([[0.85, 0.15], [0.35, 0.65], [0.25, 0.75], [0.5, 0.5]])
  diagram = calibration.reliability_diagram_data(probs, np.array([0, 0, 1, UNLABELLED]), 10)
  np.testing.assert_allclose(diagram.edges, np.linspace(0, 1, 11))
  np.testing.assert_array_equal(diagram.counts, [0, 0, 0, 0, 0, 0, 1, 1, 1, 0])
  np.testing.assert_allclose(diagram.confidence[6:9], [0.65, 0.75, 0.85])
  np.testing.assert_allclose(diagram.accuracy[6:9], [0.0, 1.0, 1.0])
  assert np.all(np.isnan(diagram.accuracy[:6]))


def test_fit_temperature_recovers_overconfidence(calibrated_logits):
  logits, labels = calibrated_logits
  assert calibration.fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)
  temperature = calibration.fit_temperature(3.0 * logits, labels)
  assert temperature == pytest.approx(3.0, rel=0.05)
  before = calibration.expected_calibration_error(special.softmax(3.0 * logits, -1), labels)
  after = calibration.expected_calibration_error(
      calibration.apply_temperature(3.0 * logits, temperature), labels)
  assert before > 0.1 and after < 0.02
  assert (calibration.negative_log_likelihood(3.0 * logits, labels, temperature)
          < calibration.negative_log_likelihood(3.0 * logits, labels))


def test_unlabelled_rows_are_ignored(calibrated_logits):
  logits, labels = calibrated_logits
  logits, labels = 3.0 * logits[:2000], labels[:2000]
  rng = np.random.default_rng(2)
  extra = 10.0 * rng.standard_normal((500, NUM_CLASSES))
  all_logits = np.concatenate([logits, extra])
  all_labels = np.concatenate([labels, np.full(500, UNLABELLED)])
  assert (calibration.fit_temperature(all_logits, all_labels)
          == calibration.fit_temperature(logits, labels))
  assert (calibration.expected_calibration_error(special.softmax(all_logits, -1), all_labels)
          == calibration.expected_calibration_error(special.softmax(logits, -1), labels))


def test_apply_temperature_keeps_top1():
  logits = np.random.default_rng(3).standard_normal((50, NUM_CLASSES))
  probs = calibration.apply_temperature(logits, 2.5)
  np.testing.assert_allclose(probs.sum(-1), 1.0)
  np.testing.assert_array_equal(probs.argmax(-1), logits.argmax(-1))
  np.testing.assert_allclose(calibration.apply_temperature(logits, 1.0),
                             special.softmax(logits, -1))


def test_errors():
  logits = np.zeros((4, 3))
  with pytest.raises(ValueError, match="labels must be in"):
    calibration.fit_temperature(logits, np.array([0, 1, 3, 0]))
  with pytest.raises(ValueError, match=r"labels must be integers \[N\]"):
    calibration.fit_temperature(logits, np.array([0, 1, 2]))
  with pytest.raises(ValueError, match="no labelled rows"):
    calibration.fit_temperature(logits, np.full(4, UNLABELLED))
  with pytest.raises(ValueError, match=r"\[N, K\]"):
    calibration.fit_temperature(np.zeros(4), np.zeros(4, int))
  with pytest.raises(ValueError, match="bounds"):
    calibration.fit_temperature(logits, np.zeros(4, int), bounds=(2.0, 1.0))
  with pytest.raises(ValueError, match="temperature"):
    calibration.apply_temperature(logits, 0.0)
  with pytest.raises(ValueError, match="sum to 1"):
    calibration.expected_calibration_error(np.full((4, 3), 0.5), np.zeros(4, int))
