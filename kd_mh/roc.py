"""ROC analysis of an incongruence score: AUC with a bootstrap CI, EER, operating thresholds.

A higher score means more incongruent; a pair is flagged when `score >= threshold` (the rule of
`sklearn.metrics.roc_curve`). The curve keeps every distinct threshold (`drop_intermediate=False`)
so that the operating points below are exact on the data. Its first threshold is +inf (flag
nothing, FPR = TPR = 0).

* AUC: `sklearn.metrics.roc_auc_score` (ties count one half).
* CI: stratified percentile bootstrap: positives and negatives are resampled separately, each
  with its own size, so every resample has both classes; deterministic for a seed.
* EER: the point where FPR = 1 - TPR, linearly interpolated between the two curve points that
  bracket it; its threshold is interpolated the same way (the finite one when the other is +inf).
* Youden: the threshold maximising J = TPR - FPR (the first, i.e. highest, on ties).
* Fixed FPR: the threshold with the largest TPR among those with FPR <= target on the data.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from sklearn import metrics


@dataclasses.dataclass(frozen=True)
class RocResult:
  """The ROC analysis of one score; `to_json` gives a dict of plain floats and lists."""
  auc: float
  auc_ci: tuple[float, float]
  ci: float
  n_bootstrap: int
  n_positive: int  # incongruent pairs
  n_negative: int  # congruent pairs
  eer: float
  eer_threshold: float
  youden_threshold: float
  youden_tpr: float
  youden_fpr: float
  fpr_target: float
  threshold_at_fpr: float
  tpr_at_fpr: float
  fpr_at_fpr: float  # the FPR actually reached on the data, <= fpr_target
  fpr: np.ndarray  # the curve, by decreasing threshold
  tpr: np.ndarray
  thresholds: np.ndarray

  def to_json(self) -> dict[str, Any]:
    """A JSON-ready dict; non-finite numbers (the +inf threshold) become None."""
    out = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, np.ndarray):
        out[field.name] = [_plain(v) for v in value.tolist()]
      elif isinstance(value, tuple):
        out[field.name] = [_plain(v) for v in value]
      else:
        out[field.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
  if isinstance(value, (int, np.integer)):
    return int(value)
  value = float(value)
  return value if math.isfinite(value) else None


def resampled_aucs(positives: np.ndarray, negatives: np.ndarray, positive_index: np.ndarray,
                   negative_index: np.ndarray) -> np.ndarray:
  """AUC of each resample, without sorting per resample.

  Resample b takes positives[positive_index[b]] and sorted(negatives)[negative_index[b]]; the
  negatives are indexed in sorted order, which is a relabelling of a uniform resample. AUC_b is
  the Mann-Whitney statistic: the mean over (positive, negative) pairs of 1[pos > neg] +
  0.5 * 1[pos == neg], computed from cumulative counts of the resampled negatives.

  Args:
    positives: [P] scores of the positive class.
    negatives: [N] scores of the negative class.
    positive_index: [B, P'] int indices into positives.
    negative_index: [B, N'] int indices into sorted(negatives).

  Returns:
    [B] float64 AUCs.
  """
  negatives = np.sort(np.asarray(negatives, np.float64))
  positives = np.asarray(positives, np.float64)
  n_boot, n_neg = negative_index.shape
  # counts[b, j]: how often resample b drew sorted negative j; cum[b, j]: draws below j.
  counts = np.bincount((negative_index + negatives.size * np.arange(n_boot)[:, None]).ravel(),
                       minlength=n_boot * negatives.size).reshape(n_boot, negatives.size)
  cum = np.concatenate([np.zeros((n_boot, 1), np.int64), np.cumsum(counts, axis=1)], axis=1)
  below = np.searchsorted(negatives, positives, side="left")[positive_index]  # [B, P']
  upto = np.searchsorted(negatives, positives, side="right")[positive_index]
  n_below = np.take_along_axis(cum, below, axis=1)
  n_equal = np.take_along_axis(cum, upto, axis=1) - n_below
  return (n_below + 0.5 * n_equal).sum(axis=1) / (positive_index.shape[1] * n_neg)


def _check(scores: np.ndarray, is_incongruent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(is_incongruent)
  if scores.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(f"scores and is_incongruent must both be [N], got {scores.shape} and "
                     f"{labels.shape}")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores have non-finite entries")
  if labels.dtype != bool:
    if not np.all((labels == 0) | (labels == 1)):
      raise ValueError("is_incongruent must be bool or 0/1")
    labels = labels.astype(bool)
  n_pos = int(labels.sum())
  if n_pos == 0 or n_pos == labels.size:
    raise ValueError(f"ROC needs both classes; got {n_pos} incongruent and "
                     f"{labels.size - n_pos} congruent pairs")
  return scores, labels


def _equal_error(fpr: np.ndarray, tpr: np.ndarray,
                 thresholds: np.ndarray) -> tuple[float, float]:
  """(EER, threshold) where FPR = FNR, interpolated on the curve."""
  gap = fpr + tpr - 1.0  # FPR - FNR: -1 at the start, +1 at the end, never decreasing
  i = int(np.argmax(gap >= 0))
  if gap[i] == 0:  # i >= 1: gap[0] = -1
    return float(fpr[i]), float(thresholds[i])
  alpha = -gap[i - 1] / (gap[i] - gap[i - 1])
  eer = fpr[i - 1] + alpha * (fpr[i] - fpr[i - 1])
  lo, hi = thresholds[i], thresholds[i - 1]
  threshold = lo if math.isinf(hi) else hi + alpha * (lo - hi)
  return float(eer), float(threshold)


def analyze(scores: np.ndarray, is_incongruent: np.ndarray, fpr_target: float = 0.05,
            n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> RocResult:
  """ROC analysis of `scores` [N] (higher = more incongruent) against `is_incongruent` [N].

  Args:
    scores: [N] finite scores, e.g. a divergence per pair.
    is_incongruent: [N] bool (or 0/1): the positive class.
    fpr_target: the false-positive rate to operate at, in (0, 1).
    n_bootstrap: number of stratified bootstrap resamples for the AUC CI, >= 1.
    seed: seed of the bootstrap's `np.random.default_rng`.
    ci: coverage of the percentile interval, in (0, 1).

  Raises:
    ValueError: on bad shapes, non-finite scores, non-binary labels, a missing class or
      out-of-range options.
  """
  if not 0 < fpr_target < 1:
    raise ValueError(f"fpr_target must be in (0, 1), got {fpr_target}")
  if not 0 < ci < 1:
    raise ValueError(f"ci must be in (0, 1), got {ci}")
  if n_bootstrap < 1:
    raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
  scores, labels = _check(scores, is_incongruent)
  positives, negatives = scores[labels], scores[~labels]

  fpr, tpr, thresholds = metrics.roc_curve(labels, scores, drop_intermediate=False)
  auc = float(metrics.roc_auc_score(labels, scores))

  rng = np.random.default_rng(seed)
  aucs = resampled_aucs(positives, negatives,
                        rng.integers(0, positives.size, (n_bootstrap, positives.size)),
                        rng.integers(0, negatives.size, (n_bootstrap, negatives.size)))
  lo, hi = np.quantile(aucs, [(1 - ci) / 2, (1 + ci) / 2])

  eer, eer_threshold = _equal_error(fpr, tpr, thresholds)
  youden = int(np.argmax(tpr - fpr))
  allowed = np.flatnonzero(fpr <= fpr_target)  # never empty: the +inf threshold has FPR 0
  best = allowed[np.argmax(tpr[allowed])]  # first maximum: the smallest FPR for that TPR
  return RocResult(
      auc=auc, auc_ci=(float(lo), float(hi)), ci=ci, n_bootstrap=n_bootstrap,
      n_positive=int(positives.size), n_negative=int(negatives.size),
      eer=eer, eer_threshold=eer_threshold,
      youden_threshold=float(thresholds[youden]), youden_tpr=float(tpr[youden]),
      youden_fpr=float(fpr[youden]),
      fpr_target=fpr_target, threshold_at_fpr=float(thresholds[best]),
      tpr_at_fpr=float(tpr[best]), fpr_at_fpr=float(fpr[best]),
      fpr=fpr, tpr=tpr, thresholds=thresholds)
