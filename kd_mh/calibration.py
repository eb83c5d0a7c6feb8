"""Temperature scaling and calibration error of a classifier's probabilities.

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides the
logits by one scalar T > 0 fitted on held-out labelled data by minimising the negative
log-likelihood; it changes confidences, never the top-1 class. The fit is a bounded 1-D search
over log T (`scipy.optimize.minimize_scalar`, method "bounded") within `TEMPERATURE_BOUNDS`,
which is wide enough for any usable network (1/20 sharpens, 20 flattens almost to uniform).

`expected_calibration_error` is the usual top-1 ECE with equal-width confidence bins. Rows whose
label is `UNLABELLED` (-1) are left out everywhere. All computation is float64 NumPy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize, special

from kd_mh.divergence import as_distribution
from kd_mh.emotions import UNLABELLED

TEMPERATURE_BOUNDS = (0.05, 20.0)


def _labelled(values: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
  """The rows of `values` [N, K] with a label, and those labels; checks shapes and ranges."""
  values = np.asarray(values, np.float64)
  labels = np.asarray(labels)
  if values.ndim != 2 or values.shape[1] < 2:
    raise ValueError(f"{what} must be [N, K] with K >= 2, got shape {values.shape}")
  if labels.shape != values.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers [N]={values.shape[0]}, got {labels.dtype} "
                     f"{labels.shape}")
  if np.any((labels < UNLABELLED) | (labels >= values.shape[1])):
    raise ValueError(f"labels must be in [0, {values.shape[1]}) or {UNLABELLED} (unlabelled)")
  keep = labels != UNLABELLED
  if not np.any(keep):
    raise ValueError("no labelled rows (every label is UNLABELLED)")
  return values[keep], labels[keep]


def _check_temperature(temperature: float) -> None:
  if not (math.isfinite(temperature) and temperature > 0):
    raise ValueError(f"temperature must be finite and > 0, got {temperature}")


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(logits / T) over the last axis, float64."""
  _check_temperature(temperature)
  return special.softmax(np.asarray(logits, np.float64) / temperature, axis=-1)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float = 1.0) -> float:
  """Mean -log softmax(logits / T)[label] over the labelled rows."""
  _check_temperature(temperature)
  return _nll(*_labelled(logits, labels, "logits"), temperature)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
  log_p = special.log_softmax(logits / temperature, axis=-1)
  return float(-np.mean(np.take_along_axis(log_p, labels[:, None], axis=-1)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
  """The T in `bounds` minimising the NLL of softmax(logits / T) on the labelled rows.

  Args:
    logits: [N, K] uncalibrated logits.
    labels: [N] class indices, `UNLABELLED` (-1) for rows to leave out.
    bounds: (low, high) search interval for T, 0 < low < high. A result at a bound means the
      optimum lies outside it.
  """
  low, high = bounds
  if not 0 < low < high:
    raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
  logits, labels = _labelled(logits, labels, "logits")
  if not np.all(np.isfinite(logits)):
    raise ValueError("logits have non-finite entries")
  result = optimize.minimize_scalar(
      lambda log_t: _nll(logits, labels, math.exp(log_t)),
      bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-6})
  return math.exp(result.x)


@dataclasses.dataclass(frozen=True)
class ReliabilityDiagram:
  """Top-1 confidence vs accuracy in equal-width bins over [0, 1].

  Bin b holds confidences in (edges[b], edges[b + 1]] (the first bin also holds 0). Empty bins
  have NaN confidence and accuracy and count 0.
  """
  edges: np.ndarray  # [n_bins + 1]
  confidence: np.ndarray  # [n_bins] mean top-1 probability in the bin
  accuracy: np.ndarray  # [n_bins] fraction of rows whose top-1 class is the label
  counts: np.ndarray  # [n_bins] int

  @property
  def ece(self) -> float:
    """sum_b (n_b / N) |accuracy_b - confidence_b| over the non-empty bins."""
    full = self.counts > 0
    gaps = np.abs(self.accuracy[full] - self.confidence[full])
    return float(np.sum(self.counts[full] * gaps) / np.sum(self.counts))


def reliability_diagram_data(probs: np.ndarray, labels: np.ndarray,
                             n_bins: int = 15) -> ReliabilityDiagram:
  """Binned top-1 confidence and accuracy of `probs` [N, K] on the labelled rows of `labels`."""
  if n_bins < 1:
    raise ValueError(f"n_bins must be >= 1, got {n_bins}")
  probs, labels = _labelled(probs, labels, "probs")
  probs = as_distribution(probs, "probs")
  confidence = probs.max(axis=-1)
  correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  bins = np.searchsorted(edges[1:-1], confidence, side="left")  # right-closed bins
  counts = np.bincount(bins, minlength=n_bins)
  with np.errstate(invalid="ignore"):
    mean_confidence = np.bincount(bins, confidence, n_bins) / counts
    accuracy = np.bincount(bins, correct, n_bins) / counts
  return ReliabilityDiagram(edges, mean_confidence, accuracy, counts)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
  """Top-1 ECE with `n_bins` equal-width confidence bins, on the labelled rows."""
  return reliability_diagram_data(probs, labels, n_bins).ece
