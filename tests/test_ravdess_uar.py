"""launch/ravdess_uar.py: the speaker-independent RAVDESS benchmark command."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_path
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
