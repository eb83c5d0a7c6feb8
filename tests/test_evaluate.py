"""Tests of kd_mh.evaluate: pairs on hand-made labels, metrics with known answers, a full run."""

import json
import math

from conftest import load_config
import numpy as np
import pytest
from scipy import special

from kd_mh import evaluate
from kd_mh.emotions import INDEX, NUM_CLASSES, UNLABELLED

HAPPY, SAD, NEUTRAL, ANGRY = INDEX["happy"], INDEX["sad"], INDEX["neutral"], INDEX["angry"]


def _hand_clips():
  """Six clips: 0-2 congruent (happy, sad, neutral), 3 naturally incongruent (angry face, neutral
  voice), 4 without speech, 5 unlabelled."""
  face_label = np.array([HAPPY, SAD, NEUTRAL, ANGRY, HAPPY, UNLABELLED])
  voice_label = np.array([HAPPY, SAD, NEUTRAL, NEUTRAL, HAPPY, UNLABELLED])
  usable = np.array([True, True, True, True, False, True])
  return face_label, voice_label, usable


def _pair_set(pairs, kind):
  mask = pairs.is_type(kind)
  return set(zip(pairs.face[mask].tolist(), pairs.voice[mask].tolist()))


def test_hand_made_pairs():
  face, voice, usable = _hand_clips()
  pairs = evaluate.build_pairs(face, voice, face, voice, usable, max_pairs=100, seed=0)
  assert pairs.counts() == {"congruent": 3, "swapped": 4, "flat": 7, "natural": 1,
                            "cross_congruent": 1}
  assert _pair_set(pairs, "congruent") == {(0, 0), (1, 1), (2, 2)}
  assert _pair_set(pairs, "natural") == {(3, 3)}
  # The only other clip with a voice of the same emotion as a face: 3's neutral voice.
  assert _pair_set(pairs, "cross_congruent") == {(2, 3)}
  # Emotional face with another emotion's voice (happy/sad/angry), both ways.
  assert _pair_set(pairs, "swapped") == {(0, 1), (1, 0), (3, 0), (3, 1)}
  # (2, 3) is missing: both are neutral, so the labels agree (it is the cross-clip control).
  assert _pair_set(pairs, "flat") == {(0, 2), (0, 3), (1, 2), (1, 3), (2, 0), (2, 1), (3, 2)}


def test_pairs_fall_back_to_the_clip_label():
  # A clip with only a clip label (-1 per modality) is congruent, never natural.
  label = np.array([HAPPY, SAD])
  none = np.full(2, UNLABELLED)
  pairs = evaluate.build_pairs(label, label, none, none, np.ones(2, bool), max_pairs=10, seed=0)
  assert pairs.counts() == {"congruent": 2, "swapped": 2, "flat": 0, "natural": 0,
                            "cross_congruent": 0}


def test_pair_invariants_and_cap_on_random_labels():
  rng = np.random.default_rng(0)
  n = 60
  face_label = rng.integers(-1, NUM_CLASSES, n)
  voice_label = np.where(rng.random(n) < 0.7, face_label, rng.integers(-1, NUM_CLASSES, n))
  usable = rng.random(n) < 0.9
  args = (face_label, voice_label, face_label, voice_label, usable)
  full = evaluate.build_pairs(*args, max_pairs=10**6, seed=0)
  capped = evaluate.build_pairs(*args, max_pairs=25, seed=3)
  assert capped.counts() == {k: min(v, 25) for k, v in full.counts().items()}
  assert full.counts()["swapped"] > 25 and full.counts()["flat"] > 25
  # Deterministic for a seed; the draw is a subset of the candidates.
  again = evaluate.build_pairs(*args, max_pairs=25, seed=3)
  np.testing.assert_array_equal(capped.face, again.face)
  np.testing.assert_array_equal(capped.voice, again.voice)
  for kind in evaluate.PAIR_TYPES:
    assert _pair_set(capped, kind) <= _pair_set(full, kind)
  for pairs in (full, capped):
    assert usable[pairs.face].all() and usable[pairs.voice].all()
    f, v = face_label[pairs.face], voice_label[pairs.voice]
    cross = pairs.is_type("swapped", "flat")
    assert np.all(pairs.face[cross] != pairs.voice[cross])
    assert np.all(f[cross] != v[cross]) and np.all(f[cross] >= 0) and np.all(v[cross] >= 0)
    swapped, flat = pairs.is_type("swapped"), pairs.is_type("flat")
    assert not np.any((f[swapped] == NEUTRAL) | (v[swapped] == NEUTRAL))
    assert np.all((f[flat] == NEUTRAL) ^ (v[flat] == NEUTRAL))
    control = pairs.is_type("cross_congruent")
    assert np.all(pairs.face[control] != pairs.voice[control]) and np.all(f[control] == v[control])
    own = pairs.is_type("congruent", "natural")
    assert np.all(pairs.face[own] == pairs.voice[own])
    assert np.all(f[pairs.is_type("congruent")] == v[pairs.is_type("congruent")])
    assert np.all(f[pairs.is_type("natural")] != v[pairs.is_type("natural")])


def test_bad_pair_inputs():
  face, voice, usable = _hand_clips()
  with pytest.raises(ValueError, match="max_pairs"):
    evaluate.build_pairs(face, voice, face, voice, usable, max_pairs=0, seed=0)
  with pytest.raises(ValueError, match=r"\[N\]"):
    evaluate.build_pairs(face, voice[:3], face, voice, usable, max_pairs=1, seed=0)


def _one_hot_probs(labels, confidence=0.9):
  probs = np.full((len(labels), NUM_CLASSES), (1 - confidence) / (NUM_CLASSES - 1))
  probs[np.arange(len(labels)), labels] = confidence
  return probs


def test_separable_outputs_give_auc_one():
  # Each model is right about its own modality: congruent pairs have identical face and voice
  # outputs (divergence 0, cosine distance 0), incongruent ones different.
  face, voice, usable = _hand_clips()
  usable = usable & (face >= 0)
  pairs = evaluate.build_pairs(face, voice, face, voice, usable, max_pairs=100, seed=0)
  safe_face, safe_voice = np.maximum(face, 0), np.maximum(voice, 0)
  embeddings = np.eye(NUM_CLASSES)
  scores = evaluate.pair_scores(_one_hot_probs(safe_face), _one_hot_probs(safe_voice),
                                embeddings[safe_face], embeddings[safe_voice], pairs)
  assert set(scores) == set(evaluate.SCORES)
  results = evaluate.analyze_scores(scores, pairs, fpr_target=0.05, n_bootstrap=50, seed=0)
  for name in evaluate.SCORES:
    np.testing.assert_allclose(scores[name][pairs.is_type("congruent")], 0, atol=1e-6)
    for comparison in evaluate.COMPARISONS:
      r = results[name][comparison]
      assert r.auc == 1.0 and r.auc_ci == (1.0, 1.0), (name, comparison)
      assert r.eer == 0.0 and r.tpr_at_fpr == 1.0
  main = results["js"]["main"]
  assert (main.n_negative, main.n_positive) == (3, 11)


def test_missing_pair_type_is_skipped():
  label = np.array([HAPPY, SAD])
  pairs = evaluate.build_pairs(label, label, label, label, np.ones(2, bool), max_pairs=10, seed=0)
  scores = {"js": np.array([0.0, 0.0, 0.5, 0.5])}  # 2 congruent, 2 swapped
  results = evaluate.analyze_scores(scores, pairs, fpr_target=0.05, n_bootstrap=10, seed=0)
  assert results["js"]["main"].auc == 1.0
  assert results["js"]["flat"] is None and results["js"]["natural"] is None
  assert evaluate.roc_summary(None, "natural") == {"skipped": "no congruent or natural pairs"}
  summary = evaluate.roc_summary(results["js"]["main"], "main")
  assert summary["auc"] == 1.0 and "fpr" not in summary


def test_finite_threshold():
  scores = np.array([0.1, 0.3])
  assert evaluate.finite_threshold(0.2, scores) == 0.2
  above = evaluate.finite_threshold(math.inf, scores)
  assert above > 0.3 and not np.any(scores >= above) and above == np.nextafter(0.3, 1)


def test_calibrate_recovers_a_known_temperature():
  rng = np.random.default_rng(0)
  z = 2.0 * rng.standard_normal((20000, NUM_CLASSES))
  # Labels drawn from softmax(z): z is calibrated, 3 z over-confident by a factor 3.
  cdf = np.cumsum(special.softmax(z, axis=1), axis=1)
  labels = np.minimum((cdf < rng.random((len(z), 1))).sum(axis=1), NUM_CLASSES - 1)
  fitted = evaluate.calibrate(3.0 * z, labels, min_examples=10)
  assert fitted.temperature == pytest.approx(3.0, rel=0.05) and not fitted.fallback
  ece = evaluate.ece_before_after(3.0 * z, labels, fitted.temperature, n_bins=15)
  assert ece["after"] < 0.02 < ece["before"] and ece["n"] == 20000


def test_calibrate_falls_back():
  logits = np.zeros((5, NUM_CLASSES))
  few = evaluate.calibrate(logits, np.array([0, 1, 2, -1, -1]), min_examples=4)
  assert (few.temperature, few.n) == (1.0, 3) and "3 labelled" in few.fallback
  single = evaluate.calibrate(logits, np.array([2, 2, 2, 2, -1]), min_examples=4)
  assert single.temperature == 1.0 and single.fallback == "a single class"
  assert evaluate.ece_before_after(logits, np.full(5, -1), 1.0, n_bins=15) is None


def test_load_threshold_errors(tmp_path):
  with pytest.raises(ValueError, match="threshold.json not found"):
    evaluate.load_threshold(str(tmp_path))
  path = tmp_path / evaluate.THRESHOLD_FILE
  path.write_text("{not json")
  with pytest.raises(ValueError, match="threshold.json: not JSON"):
    evaluate.load_threshold(str(tmp_path))
  path.write_text(json.dumps({"divergence": "js"}))
  with pytest.raises(ValueError, match="missing key 'threshold'"):
    evaluate.load_threshold(str(tmp_path))


def test_config_is_checked_before_loading(tmp_path):
  config = load_config("evaluate", f"student={tmp_path}")
  config.divergence = "cosine"
  with pytest.raises(ValueError, match="config.divergence='cosine'"):
    evaluate.evaluate(config, str(tmp_path / "eval"))
  with pytest.raises(ValueError, match="config.student='' is empty"):
    evaluate.evaluate(load_config("evaluate", ""), str(tmp_path / "eval"))


def test_bad_workdirs(tmp_path, tiny_runs):
  # A student "run" that is not one, a teacher run, and an evaluation workdir that is a file.
  with pytest.raises(ValueError, match="not a kd_mh training workdir"):
    evaluate.evaluate(load_config("evaluate", f"student={tmp_path}"), str(tmp_path / "eval"))
  with pytest.raises(ValueError, match="a 'teacher' run; evaluate needs a student run"):
    evaluate.evaluate(load_config("evaluate", f"student={tiny_runs['teacher']}"),
                      str(tmp_path / "eval"))
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="is not a directory"):
    evaluate.evaluate(load_config("evaluate", f"student={tiny_runs['student']}"),
                      str(tmp_path / "file"))


def test_evaluate_tiny_run(tmp_path, tiny_runs, demo_corpus):
  config = load_config("evaluate", f"student={tiny_runs['student']},runlocal")
  config.min_calibration_examples = 3  # the fixture's validation split has 3 clips
  result = evaluate.evaluate(config, str(tmp_path))
  threshold = evaluate.load_threshold(str(tmp_path))
  assert threshold == result["threshold"]
  assert threshold["teacher_temperature"] > 0 and threshold["student_temperature"] > 0
  assert threshold["threshold"] == threshold["youden_threshold"]
  assert threshold["data"]["name"] == "kd_mh_demo" and threshold["data"]["split"] == "test"
  assert threshold["data"]["threshold_split"] in ("validation", "test")
  point = result["metrics"]["operating_point"]
  assert point["threshold"] == threshold["threshold"] and 0 <= point["tpr"] <= 1

  # The generator's truth: the test split's congruent and incongruent clips.
  truth = [json.loads(line) for line in
           (demo_corpus["root"] / "ground_truth.jsonl").read_text().splitlines() if line]
  test = [r for r in truth if r["split"] == "test"]
  counts = threshold["data"]["pairs"]
  assert counts["congruent"] == sum(r["congruent"] for r in test)
  assert counts["natural"] == sum(not r["congruent"] for r in test)

  metrics = json.loads((tmp_path / evaluate.METRICS_FILE).read_text())
  assert metrics == json.loads(json.dumps(result["metrics"]))
  for key in ("auc", "auc_ci", "eer", "tpr_at_fpr"):
    assert key in metrics
  assert 0 <= metrics["auc"] <= 1 and metrics["auc_ci"][0] <= metrics["auc_ci"][1]
  assert metrics["n_negative"] == counts["congruent"]
  assert metrics["n_positive"] == counts["swapped"] + counts["flat"]
  assert set(metrics["comparisons"]) == {"swapped", "flat", "natural", "cross_clip"}
  assert set(metrics["scores"]) == set(evaluate.SCORES)
  for model in ("teacher", "student"):
    calibration = metrics["calibration"][model]
    assert calibration["fallback"] == "" and calibration["n"] == 3
    assert set(calibration["ece"]) == {"validation", "test"}
  for png in (evaluate.ROC_PNG, evaluate.HISTOGRAM_PNG, evaluate.RELIABILITY_PNG):
    assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = evaluate.summary_table(metrics, threshold)
  assert "congruent vs swapped+flat" in table and "AUC" in table


def test_operating_point_flags_scores_at_or_above_the_threshold():
  kinds = [evaluate.PAIR_TYPES.index(k) for k in
           ("congruent", "congruent", "swapped", "flat", "natural", "swapped")]
  pairs = evaluate.Pairs(face=np.arange(6), voice=np.arange(6), kind=np.array(kinds))
  scores = np.array([0.1, 0.5, 0.5, 0.9, 0.9, 0.2])
  point = evaluate.operating_point(scores, pairs, threshold=0.5)
  assert point == {"threshold": 0.5, "tpr": 2 / 3, "fpr": 0.5, "n_positive": 3, "n_negative": 2}
