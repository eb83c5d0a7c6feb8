"""launch/ravdess_uar.py: the speaker-independent RAVDESS benchmark command."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_path
import test_input_pipeline
from kd_mh import emotions
from kd_mh import ravdess_benchmark

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "launch.ravdess_uar", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_run_configs_differ_only_in_what_each_run_means():
  configs = {run: ravdess_benchmark.run_config(run, "/speech", "cremad", "/faces", steps=100, seed=3,
                                         overrides=["batch_size=16", "student.model.rnn_hidden=64"])
             for run in ravdess_benchmark.RUNS}
  assert configs["supervised"].mode == "student_supervised"
  assert configs["supervised"].data.classes == configs["kd_labels"].data.classes == "ravdess"
  assert configs["kd_only"].data.classes == "" and configs["kd_only"].loss.ce_weight == 0.0
  assert configs["kd_labels"].loss.ce_weight > 0
  for config in configs.values():
    assert config.data.eval_split == "test" and config.num_train_steps == 100
    assert config.seed == 3 and config.batch_size == 16
    assert config.student.model.rnn_hidden == 64
  for run in ("kd_labels", "kd_only"):
    assert configs[run].data.pair_faces.name == "kd_mh_cremad"
    assert configs[run].data.pair_faces.data_dir == "/faces"


def test_folding_a_confusion_matrix_merges_calm_into_neutral():
  classes = emotions.class_set("ravdess")
  confusion = np.zeros((8, 8), np.int64)
  confusion[classes.index("calm"), classes.index("neutral")] = 3  # wrong in 8 classes, right in 7
  confusion[classes.index("happy"), classes.index("calm")] = 2
  folded = ravdess_benchmark.fold_confusion(confusion, emotions.fold_onto_fer(classes))
  neutral, happy = emotions.index("neutral"), emotions.index("happy")
  assert folded[neutral, neutral] == 3 and folded[happy, neutral] == 2 and folded.sum() == 5


def test_speaker_standardised_scores_remove_each_speakers_lean():
  # Two speakers, four utterances each of classes 0..3; speaker "a" leans to class 0 and speaker
  # "b" to class 3 by more than the utterances' own evidence, so raw argmax gets half wrong.
  labels = np.tile(np.arange(4), 2)
  speakers = np.repeat(["a", "b"], 4)
  logits = np.eye(4)[labels] * 1.0
  logits[speakers == "a", 0] += 3.0
  logits[speakers == "b", 3] += 3.0
  assert np.mean(logits.argmax(axis=1) == labels) == 0.25
  standardised = ravdess_benchmark.speaker_standardised(logits, speakers)
  np.testing.assert_array_equal(standardised.argmax(axis=1), labels)
  for speaker in "ab":
    mine = standardised[speakers == speaker]
    np.testing.assert_allclose(mine.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(mine.std(axis=0), 1, atol=1e-9)
  # A speaker heard once has nothing to be standardised against: log-probabilities unchanged.
  alone = ravdess_benchmark.speaker_standardised(logits[:1], speakers[:1])
  np.testing.assert_allclose(np.exp(alone).sum(), 1.0)
  assert alone.argmax() == 0


def test_a_class_scored_impossible_stays_impossible_after_standardising():
  logits = np.array([[0.0, 1.0, -np.inf], [1.0, 0.0, -np.inf], [0.5, 0.2, -np.inf]])
  standardised = ravdess_benchmark.speaker_standardised(logits, np.array(["a"] * 3))
  assert np.all(standardised[:, 2] == -np.inf) and np.isfinite(standardised[:, :2]).all()
  np.testing.assert_array_equal(standardised.argmax(axis=1), [1, 0, 0])


def test_mfcc_statistics_are_the_dct_of_the_valid_frames():
  # Every valid frame the same constant c over 16 mel bins: the orthonormal DCT-II puts
  # c * sqrt(16) in coefficient 0 and nothing elsewhere, with no spread over frames.
  logmel = np.full((6, 16), 2.0)
  logmel[4:] = 99.0  # padding, masked out
  mask = np.array([True] * 4 + [False] * 2)
  stats = ravdess_benchmark.mfcc_statistics(logmel, mask, num_coefficients=5)
  np.testing.assert_allclose(stats, [8.0, 0, 0, 0, 0] + [0] * 5, atol=1e-12)
  # Two alternating frames: the mean is their average's DCT, the sd half their difference's.
  logmel[1] = logmel[3] = 4.0
  stats = ravdess_benchmark.mfcc_statistics(logmel, mask, num_coefficients=1)
  np.testing.assert_allclose(stats, [12.0, 4.0])
  with pytest.raises(ValueError, match="no valid log-mel frame"):
    ravdess_benchmark.mfcc_statistics(logmel, np.zeros(6, bool))


def test_the_reference_baseline_separates_classes_the_spectrum_tells_apart(tmp_path):
  # Each class raises its own mel bin; speakers differ by an overall level. Train
  # speakers a and b, test speaker c; a test clip labelled outside the class set is left out.
  classes = emotions.class_set("ravdess")
  rng = np.random.default_rng(0)
  examples = []
  for speaker, split, per_class in (("a", "train", 3), ("b", "train", 3), ("c", "test", 2)):
    for k, name in enumerate(classes):
      for i in range(per_class):
        ex = test_input_pipeline._example(f"{split}/{speaker}{k}{i}", split, -1, n_logmel=30)
        logmel = rng.normal(0.0, 0.3, (30, test_input_pipeline.MELS)).astype(np.float32)
        logmel += {"a": 0.0, "b": 1.0, "c": 0.5}[speaker]
        logmel[:, k] += 2.0
        ex.update(label_name=name.upper() if i else name, speaker_id=speaker, logmel=logmel)
        examples.append(ex)
  extra = test_input_pipeline._example("test/song", "test", -1, n_logmel=30)
  examples.append({**extra, "label_name": "song", "speaker_id": "c"})
  data_dir = test_input_pipeline._write_corpus(tmp_path, "ravdess", examples)
  result = ravdess_benchmark.reference_score(data_dir)
  assert result["train_examples"] == 48 and result["test_examples"] == 16
  assert result["classes"] == list(classes) and result["test_speakers"] == 1
  assert result["uar"] == 1.0 and result["accuracy"] == 1.0
  assert np.trace(result["confusion"]) == 16
  # Nothing the classifier can learn from: labels shuffled against the spectra in training.
  for ex in examples:
    if ex["split"] == "train":
      ex["label_name"] = classes[rng.integers(8)]
  result = ravdess_benchmark.reference_score(
      test_input_pipeline._write_corpus(tmp_path / "shuffled", "ravdess", examples))
  assert result["uar"] < 0.6
  # No train utterance with a label in the class set: a clear error, not a classifier of nothing.
  unusable = [{**ex, "label_name": "song"} if ex["split"] == "train" else ex for ex in examples]
  with pytest.raises(ValueError, match="the train split needs two classes"):
    ravdess_benchmark.reference_score(
        test_input_pipeline._write_corpus(tmp_path / "unusable", "ravdess", unusable))


def test_misuse_exits_2_with_the_reason(tmp_path):
  result = _run(f"--root={shared_path('ravdess')}", f"--out={tmp_path}", "--test_actors=30",
                "--runs=supervised")
  assert result.returncode == 2 and "test actors ['30'] are not under" in result.stderr
  with pytest.raises(ValueError, match="expected FIELD=VALUE"):
    ravdess_benchmark.run_config("supervised", "/speech", "cremad", None, 10, 0, ["batch_size"])


@pytest.mark.slow  # about 2 min: prepares two actors and the CREMA-D faces, three tiny runs
def test_the_benchmark_trains_and_scores_held_out_actors(tmp_path):
  ravdess, cremad = shared_path("ravdess"), shared_path("cremad")
  result = _run(f"--root={ravdess}", f"--out={tmp_path}", "--train_actors=01",
                "--test_actors=02", f"--faces_root={cremad}", "--runlocal", "--steps=3")
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["splits"] == {"train": 60, "test": 60}
  reference = results["reference"][ravdess_benchmark.REFERENCE]
  assert reference["train_examples"] == 60 and reference["test_examples"] == 60
  assert 0 <= reference["uar"] <= 1 and "mfcc_linear (reference)" in result.stdout
  for run in ravdess_benchmark.RUNS:
    scores = results["runs"][run]
    assert scores["step"] == 3 and scores["test_examples"] == 60
    assert np.sum(scores["confusion"]) == 60 and 0 <= scores["uar"] <= 1
    assert scores["test_speakers"] == 1 and 0 <= scores["uar_speaker_standardised"] <= 1
    assert len(scores["classes"]) == (7 if run == "kd_only" else 8)
  for run in ("kd_labels", "kd_only"):  # every train utterance whose label has a face clip
    assert 0 <= results["runs"][run]["train_agreement"] <= 1
    assert results["runs"][run]["train_agreement_examples"] > 0
  assert "| kd_only | 7 |" in (tmp_path / "results.md").read_text()
