"""Tests of kd_mh.roc on hand-made and simulated scores with known ROC properties."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from kd_mh import roc


def _binormal(n, d, rng):
  """n congruent scores ~ N(0, 1) then n incongruent ~ N(d, 1); true AUC = Phi(d / sqrt 2)."""
  scores = np.concatenate([rng.standard_normal(n), d + rng.standard_normal(n)])
  return scores, np.repeat([False, True], n)


def test_hand_example():
  result = roc.analyze(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), n_bootstrap=10)
  assert result.auc == pytest.approx(0.75)
  np.testing.assert_allclose(result.fpr, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(result.tpr, [0, 0.5, 0.5, 1, 1])
  assert math.isinf(result.thresholds[0])
  assert (result.eer, result.eer_threshold) == pytest.approx((0.5, 0.4))
  # J = 0.5 at thresholds 0.8 and 0.35: the first (highest) wins.
  assert (result.youden_threshold, result.youden_tpr, result.youden_fpr) == (0.8, 0.5, 0.0)
  assert (result.threshold_at_fpr, result.tpr_at_fpr, result.fpr_at_fpr) == (0.8, 0.5, 0.0)
  assert (result.n_positive, result.n_negative) == (2, 2)


def test_eer_is_interpolated():
  # Curve (0, 0) -> (0, .5) at 3 -> (1, .5) at 2: FPR = FNR = 0.5 halfway, at threshold 2.5.
  result = roc.analyze(np.array([3.0, 1.0, 2.0]), np.array([True, True, False]), n_bootstrap=10)
  assert (result.eer, result.eer_threshold) == pytest.approx((0.5, 2.5))


def test_separable_scores():
  rng = np.random.default_rng(0)
  scores = np.concatenate([rng.random(200), 2 + rng.random(100)])
  labels = np.repeat([0, 1], [200, 100])
  result = roc.analyze(scores, labels, n_bootstrap=200)
  assert result.auc == 1.0 and result.auc_ci == (1.0, 1.0)
  assert result.eer == 0.0 and result.eer_threshold == scores[200:].min()
  assert (result.youden_tpr, result.youden_fpr) == (1.0, 0.0)
  assert (result.tpr_at_fpr, result.fpr_at_fpr) == (1.0, 0.0)


def test_random_scores_have_auc_one_half():
  rng = np.random.default_rng(1)
  result = roc.analyze(rng.random(20000), rng.random(20000) < 0.5, n_bootstrap=100)
  assert result.auc == pytest.approx(0.5, abs=0.015)
  assert result.eer == pytest.approx(0.5, abs=0.015)
  assert result.auc_ci[0] < result.auc < result.auc_ci[1]


def test_binormal_closed_forms():
  d = 1.0
  scores, labels = _binormal(10000, d, np.random.default_rng(2))
  result = roc.analyze(scores, labels, n_bootstrap=100)
  assert result.auc == pytest.approx(stats.norm.cdf(d / math.sqrt(2)), abs=0.01)
  assert result.eer == pytest.approx(stats.norm.cdf(-d / 2), abs=0.01)
  assert result.eer_threshold == pytest.approx(d / 2, abs=0.05)
  # Youden's J peaks midway between the means at 2 Phi(d/2) - 1; the argmax of a flat peak is
  # noisy, its height is not.
  assert result.youden_tpr - result.youden_fpr == pytest.approx(2 * stats.norm.cdf(d / 2) - 1,
                                                                abs=0.02)
  assert result.youden_threshold == pytest.approx(d / 2, abs=0.3)
  assert result.fpr_at_fpr <= 0.05
  assert result.tpr_at_fpr == pytest.approx(stats.norm.sf(stats.norm.isf(0.05) - d), abs=0.02)


def test_threshold_at_fpr_target_holds_on_the_data():
  rng = np.random.default_rng(3)
  scores = np.round(np.concatenate([rng.standard_normal(300), 0.8 + rng.standard_normal(200)]),
                    1)  # rounded: many ties
  labels = np.repeat([False, True], [300, 200])
  for target in (0.01, 0.05, 0.2):
    result = roc.analyze(scores, labels, fpr_target=target, n_bootstrap=10)
    flagged = scores >= result.threshold_at_fpr
    assert np.mean(flagged[~labels]) == result.fpr_at_fpr <= target
    assert np.mean(flagged[labels]) == result.tpr_at_fpr
    # No threshold on the data does better within the FPR budget.
    candidates = np.unique(scores)
    fprs = np.mean(scores[~labels][:, None] >= candidates, axis=0)
    tprs = np.mean(scores[labels][:, None] >= candidates, axis=0)
    assert result.tpr_at_fpr == tprs[fprs <= target].max()


def test_resampled_aucs_match_sklearn():
  rng = np.random.default_rng(4)
  positives, negatives = rng.integers(0, 6, 15).astype(float), rng.integers(0, 5, 11).astype(float)
  pos_index, neg_index = rng.integers(0, 15, (20, 12)), rng.integers(0, 11, (20, 9))
  got = roc.resampled_aucs(positives, negatives, pos_index, neg_index)
  sorted_negatives = np.sort(negatives)
  for b in range(20):
    pos, neg = positives[pos_index[b]], sorted_negatives[neg_index[b]]
    want = metrics.roc_auc_score(np.repeat([1, 0], [pos.size, neg.size]),
                                 np.concatenate([pos, neg]))
    assert got[b] == pytest.approx(want, abs=1e-12)


def test_bootstrap_is_deterministic_for_a_seed():
  scores, labels = _binormal(50, 1.0, np.random.default_rng(5))
  first = roc.analyze(scores, labels, n_bootstrap=300, seed=7)
  assert roc.analyze(scores, labels, n_bootstrap=300, seed=7).auc_ci == first.auc_ci
  assert roc.analyze(scores, labels, n_bootstrap=300, seed=8).auc_ci != first.auc_ci
  assert first.auc_ci[0] < first.auc < first.auc_ci[1]


def test_bootstrap_ci_covers_true_auc():
  d, n, datasets = 1.0, 100, 200
  true_auc = stats.norm.cdf(d / math.sqrt(2))
  rng = np.random.default_rng(6)
  covered = 0
  for i in range(datasets):
    scores, labels = _binormal(n, d, rng)
    low, high = roc.analyze(scores, labels, n_bootstrap=400, seed=i).auc_ci
    covered += low <= true_auc <= high
  assert 0.90 <= covered / datasets <= 0.99


def test_to_json_is_plain():
  result = roc.analyze(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), n_bootstrap=10)
  out = result.to_json()
  assert json.loads(json.dumps(out, allow_nan=False)) == out
  assert out["thresholds"][0] is None and out["thresholds"][1:] == [0.8, 0.4, 0.35, 0.1]
  assert out["auc"] == 0.75 and isinstance(out["n_positive"], int)
  assert len(out["auc_ci"]) == 2 and all(type(v) is float for v in out["fpr"])


@pytest.mark.parametrize("scores, labels, match", [
    (np.array([0.1, 0.2]), np.array([1, 1]), "both classes"),
    (np.array([0.1, 0.2]), np.array([False, False]), "both classes"),
    (np.array([0.1, 0.2]), np.array([0, 2]), "bool or 0/1"),
    (np.array([0.1, 0.2]), np.array([0, 1, 1]), r"\[N\]"),
    (np.array([np.nan, 0.2]), np.array([0, 1]), "non-finite"),
])
def test_errors(scores, labels, match):
  with pytest.raises(ValueError, match=match):
    roc.analyze(scores, labels)


def test_option_errors():
  scores, labels = np.array([0.1, 0.2]), np.array([0, 1])
  with pytest.raises(ValueError, match="fpr_target"):
    roc.analyze(scores, labels, fpr_target=0.0)
  with pytest.raises(ValueError, match="ci"):
    roc.analyze(scores, labels, ci=1.0)
  with pytest.raises(ValueError, match="n_bootstrap"):
    roc.analyze(scores, labels, n_bootstrap=0)
