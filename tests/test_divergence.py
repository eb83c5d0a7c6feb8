"""Tests of kd_mh.divergence against closed forms and hand-computed cases."""

import math

import numpy as np
import pytest
from scipy.spatial import distance

from kd_mh import divergence as dv
from kd_mh.emotions import EMOTIONS, NUM_CLASSES, VALENCE_AROUSAL

RNG = np.random.default_rng(0)
PROB_FNS = [dv.jensen_shannon, dv.symmetric_kl, dv.total_variation, dv.hellinger,
            dv.valence_arousal_distance]


def _probs(*shape):
  return RNG.dirichlet(np.full(NUM_CLASSES, 0.7), size=shape)


def _one_hot(i, k=NUM_CLASSES):
  return np.eye(k)[i]


@pytest.mark.parametrize("fn", PROB_FNS)
def test_identical_distributions_give_zero(fn):
  p = _probs(4, 3)
  np.testing.assert_allclose(fn(p, p), np.zeros((4, 3)), atol=1e-12)


@pytest.mark.parametrize("fn", PROB_FNS)
def test_symmetry_and_batch_shape(fn):
  p, q = _probs(6), _probs(6)
  got = fn(p, q)
  assert got.shape == (6,) and got.dtype == np.float64
  np.testing.assert_allclose(got, fn(q, p), rtol=1e-12)
  assert np.all(got > 0)


def test_disjoint_one_hots():
  p, q = _one_hot(0), _one_hot(3)
  assert dv.jensen_shannon(p, q) == pytest.approx(math.log(2))
  assert dv.total_variation(p, q) == pytest.approx(1.0)
  assert dv.hellinger(p, q) == pytest.approx(1.0)
  assert dv.symmetric_kl(p, q, eps=0.0) == math.inf
  # Floored: p' = (a, b, ..., b) with a = 1/(1 + (K-1) eps), b = eps a; q' has its a on class 3.
  # Only classes 0 and 3 differ: each direction is a log(a/b) + b log(b/a) = (a - b) log(a/b).
  eps = 1e-6
  a, b = 1 / (1 + (NUM_CLASSES - 1) * eps), eps / (1 + (NUM_CLASSES - 1) * eps)
  assert dv.symmetric_kl(p, q, eps=eps) == pytest.approx(2 * (a - b) * math.log(a / b))


def test_two_class_examples_by_hand():
  p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
  # m = (0.7, 0.3)
  js = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)) + 0.5 * (
      0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3))
  assert dv.jensen_shannon(p, q) == pytest.approx(js, rel=1e-12)
  assert dv.jensen_shannon(p, q) == pytest.approx(distance.jensenshannon(p, q) ** 2, rel=1e-9)
  skl = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
         + 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
  assert dv.symmetric_kl(p, q, eps=0.0) == pytest.approx(skl, rel=1e-12)
  assert dv.total_variation(p, q) == pytest.approx(0.4)
  bc = math.sqrt(0.45) + math.sqrt(0.05)
  assert dv.hellinger(p, q) == pytest.approx(math.sqrt(1 - bc), rel=1e-12)


def test_bounds_and_hellinger_tv_relation():
  p, q = _probs(2000), _probs(2000)
  js, tv, h = dv.jensen_shannon(p, q), dv.total_variation(p, q), dv.hellinger(p, q)
  assert np.all((js >= 0) & (js <= math.log(2)))
  assert np.all((tv >= 0) & (tv <= 1)) and np.all((h >= 0) & (h <= 1))
  assert np.all(h ** 2 <= tv + 1e-12)
  assert np.all(tv <= math.sqrt(2) * h + 1e-12)


def test_broadcasting_one_against_many():
  p, q = _probs(5), _probs()
  np.testing.assert_allclose(dv.jensen_shannon(p, q),
                             [dv.jensen_shannon(row, q) for row in p], rtol=1e-12)


def test_valence_arousal_of_one_hot_is_class_coordinates():
  for i, name in enumerate(EMOTIONS):
    np.testing.assert_allclose(dv.valence_arousal(_one_hot(i)), VALENCE_AROUSAL[name])
  happy, sad = EMOTIONS.index("happy"), EMOTIONS.index("sad")
  want = np.hypot(*(np.subtract(VALENCE_AROUSAL["happy"], VALENCE_AROUSAL["sad"])))
  assert dv.valence_arousal_distance(_one_hot(happy), _one_hot(sad)) == pytest.approx(want)


def test_valence_arousal_is_expectation():
  p = np.zeros(NUM_CLASSES)
  p[EMOTIONS.index("angry")], p[EMOTIONS.index("neutral")] = 0.25, 0.75
  np.testing.assert_allclose(dv.valence_arousal(p), 0.25 * np.array(VALENCE_AROUSAL["angry"]))
  assert dv.valence_arousal(_probs(3, 2)).shape == (3, 2, 2)


def test_embedding_cosine():
  a = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
  b = np.array([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0], [1.0, 0.0]])
  np.testing.assert_allclose(dv.embedding_cosine(a, b), [1.0, 0.0, 2.0, 1.0], atol=1e-12)
  with pytest.raises(ValueError, match="same D"):
    dv.embedding_cosine(np.ones((2, 3)), np.ones((2, 4)))


def test_registry_and_dispatcher():
  assert set(dv.DIVERGENCES) == {"js", "symmetric_kl", "total_variation", "hellinger", "va"}
  assert dv.DEFAULT in dv.DIVERGENCES
  p, q = _probs(3), _probs(3)
  for name, fn in dv.DIVERGENCES.items():
    np.testing.assert_array_equal(dv.divergence(name, p, q), fn(p, q))
  with pytest.raises(ValueError, match="js, symmetric_kl"):
    dv.divergence("kl", p, q)


@pytest.mark.parametrize("p, match", [
    (np.array([0.5, 0.6]), "sum to 1"),
    (np.array([1.2, -0.2]), "negative"),
    (np.array([np.nan, 1.0]), "non-finite"),
    (np.array(1.0), "class axis"),
])
def test_rejects_non_distributions(p, match):
  with pytest.raises(ValueError, match=match):
    dv.jensen_shannon(p, np.array([0.5, 0.5]))


def test_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="same number of classes"):
    dv.total_variation(_probs(3), np.full((3, 2), 0.5))
  with pytest.raises(ValueError, match="broadcast"):
    dv.total_variation(_probs(3), _probs(4))
  with pytest.raises(ValueError, match="7 classes"):
    dv.valence_arousal(np.full(2, 0.5))


def test_sliding_windows_on_known_grid():
  frames = np.arange(100) / 10.0  # 10 s at 10 fps: the span ends at 10.0
  windows = dv.sliding_windows(frames, 2.0, 0.5)
  assert windows.shape == (17, 2)
  np.testing.assert_allclose(windows[:, 0], 0.5 * np.arange(17))
  np.testing.assert_allclose(windows[:, 1] - windows[:, 0], 2.0)
  # A span that is not a whole number of hops gets one last window running past the end.
  np.testing.assert_allclose(dv.sliding_windows(frames, 2.0, 0.5, end=10.2)[-1], [8.5, 10.5])
  np.testing.assert_allclose(dv.sliding_windows(frames, 2.0, 0.5, start=1.0, end=2.0),
                             [[1.0, 3.0]])
  with pytest.raises(ValueError, match="> 0"):
    dv.sliding_windows(frames, 2.0, 0.0)


def test_window_means_counts_and_masking():
  t = np.array([0.0, 0.5, 1.0, 1.5, 2.5])
  values = np.array([[1.0, 0.0], [0.0, 1.0], [np.nan, np.nan], [1.0, 0.0], [0.5, 0.5]])
  mask = np.array([True, True, False, True, True])
  windows = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 2.5], [2.0, 3.0]])
  means, counts = dv.window_means(values, t, mask, windows)
  np.testing.assert_array_equal(counts, [2, 1, 0, 1])
  np.testing.assert_allclose(means[[0, 1, 3]], [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
  assert np.all(np.isnan(means[2]))
  scalar_means, _ = dv.window_means(np.arange(5.0), t, None, windows)
  np.testing.assert_allclose(scalar_means, [0.5, 2.5, np.nan, 4.0])
  with pytest.raises(ValueError, match="mask"):
    dv.window_means(values, t, mask[:3], windows)


def test_face_and_voice_on_one_grid():
  # Face at 10 fps and voice at 4 Hz, both constant: per-window JS is that of the constants.
  face_t, voice_t = np.arange(60) / 10.0, np.arange(24) / 4.0
  p, q = _probs(), _probs()
  windows = dv.sliding_windows(face_t, 2.0, 0.5)
  face, face_n = dv.window_means(np.tile(p, (60, 1)), face_t, None, windows)
  voice, voice_n = dv.window_means(np.tile(q, (24, 1)), voice_t, None, windows)
  assert len(windows) == 9 and np.all(face_n == 20) and np.all(voice_n == 8)
  np.testing.assert_allclose(dv.jensen_shannon(face, voice), dv.jensen_shannon(p, q))
