"""The trainer on a small generated demo corpus: real steps, resume, devices, checkpoints, guards.

The runs share one compiled step function per configuration (the step's static spec is hashable,
so `jax.jit` reuses the compilation across `train_and_evaluate` calls in this process).
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from kd_mh import emotions
from kd_mh import inference
from kd_mh import input_pipeline
from kd_mh import parallel
from kd_mh import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(demo_corpus):
  return demo_corpus["data_dir"]


def _student_config(demo, **overrides):
  # A randomly initialised teacher keeps the test offline (no FER2013 download).
  config = load_config("student_kd", f"runlocal,data_dir={demo},teacher=random")
  config.update_from_flattened_dict(overrides)
  return config


def _params(workdir, step=None):
  return jax.tree.map(np.asarray, train.load_trained(str(workdir), step).variables)


# ---------------------------------------------------------------------------------------------
# Pure pieces.


def test_uar_and_accuracy_known_answers():
  confusion = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]], float)  # class 1 never occurs
  assert train.accuracy(confusion) == pytest.approx(5 / 8)
  assert train.unweighted_average_recall(confusion) == pytest.approx((3 / 4 + 2 / 4) / 2)
  assert math.isnan(train.accuracy(np.zeros((3, 3))))
  matrix = train.confusion_matrix(np.array([0, 2, 2, 1]), np.array([0, 2, 0, 1]),
                                  np.array([True, True, True, False]), num_classes=3)
  np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 0, 0], [1, 0, 1]])


def test_summarize_eval_averages_sums_over_their_counts():
  sums = {"confusion": np.eye(7) * 2, "labelled": 14, "ce": 7.0, "agree": 3, "with_teacher": 4,
          "kd": 2.0, "align": 1.0, "teacher_confusion": np.eye(7)}
  metrics = train.summarize_eval(sums)
  assert metrics == {"accuracy": 1.0, "uar": 1.0, "ce": 0.5, "agreement": 0.75, "kd": 0.5,
                     "align": 0.25, "teacher_accuracy": 1.0}


def test_config_args_and_every_config_file():
  arg = train.parse_config_arg("runlocal,data_dir=/x,steps=3", runlocal=False, data_dir="",
                               steps=1)
  assert (arg.runlocal, arg.data_dir, arg.steps) == (True, "/x", 3)
  with pytest.raises(ValueError, match="unknown config argument 'nope'"):
    train.parse_config_arg("nope", runlocal=False)
  modes = {"student_kd": "student", "teacher_finetune": "teacher",
           "student_supervised": "student_supervised"}
  for name, mode in modes.items():
    full, local = load_config(name, None), load_config(name, "runlocal")
    assert full.mode == local.mode == mode
    assert local.num_train_steps < full.num_train_steps and local.batch_size < full.batch_size
  assert load_config("student_kd", "pair_corpus=demo").data.pair_faces.name == "kd_mh_demo"


def test_a_bad_config_fails_fast_naming_the_field(tmp_path):
  config = load_config("student_kd", "runlocal")
  config.best_metric = "f1"
  with pytest.raises(ValueError, match="config.best_metric"):
    train.train_and_evaluate(config, str(tmp_path))
  config = load_config("teacher_finetune", "runlocal")
  config.mode = "teachr"
  with pytest.raises(ValueError, match="config.mode"):
    train.train_and_evaluate(config, str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Real steps.


def test_student_distillation_step_lowers_the_loss_on_a_fixed_batch(demo):
  config = _student_config(demo)
  split = input_pipeline.open_split(config.data.data_dir, config.data.name, "train")
  inputs = train.model_inputs(config, split)
  key = jax.random.PRNGKey(0)
  teacher, teacher_variables, _ = train.load_teacher(config, inputs, key)
  spec = train.step_spec(config, teacher)
  mesh = parallel.make_mesh()
  state = parallel.replicate(train.create_state(spec, train.init_variables(spec, inputs, key),
                                                key), mesh)
  batch = parallel.global_batch(next(input_pipeline.Batches(
      split, batch_size=8, max_frames=inputs.max_frames,
      max_logmel_frames=inputs.max_logmel_frames, seed=0, train=True)), mesh)
  step, _ = train.jit_steps(spec, mesh)  # the trainer's own compiled step
  history = []
  for _ in range(6):
    state, metrics = step(state, batch, teacher_variables)
    history.append(jax.device_get(metrics))
  losses = [float(m["loss"]) for m in history]
  assert all(m["finite"] for m in history) and int(state.step) == 6
  assert losses[-1] < losses[0] - 0.05, losses
  for term in ("kd", "align", "ce"):  # every term is live
    assert history[0][term] > 0
  assert int(history[0]["with_teacher"]) == 8 and int(history[0]["labelled"]) == 8


@pytest.fixture(scope="module")
def student_runs(demo, tmp_path_factory):
  """An uninterrupted 4-step student run, and one stopped after 2 steps then resumed to 4."""
  tmp = tmp_path_factory.mktemp("runs")
  whole = train.train_and_evaluate(_student_config(demo), str(tmp / "whole"))
  first = train.train_and_evaluate(_student_config(demo, stop_after_steps=2), str(tmp / "split"))
  resumed = train.train_and_evaluate(_student_config(demo), str(tmp / "split"))
  return {"dir": tmp, "whole": whole, "first": first, "resumed": resumed}


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(student_runs):
  tmp = student_runs["dir"]
  assert student_runs["first"]["step"] == 2 and student_runs["resumed"]["step"] == 4
  assert student_runs["resumed"]["eval"] == student_runs["whole"]["eval"]
  assert student_runs["resumed"]["train"]["loss"] == student_runs["whole"]["train"]["loss"]
  whole, resumed = _params(tmp / "whole", 4), _params(tmp / "split", 4)
  jax.tree.map(np.testing.assert_array_equal, whole, resumed)
  early = _params(tmp / "whole", 2)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(early),
                                                       jax.tree.leaves(whole)))
  # Every step's loss, as logged, is the same in both histories.
  whole, split = train.read_scalars(tmp / "whole"), train.read_scalars(tmp / "split")
  assert whole["train/loss"] == split["train/loss"]


def test_checkpoints_config_and_tensorboard_events_are_written(student_runs):
  workdir = student_runs["dir"] / "whole"
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
  assert {p.name for p in (workdir / "checkpoints" / "4").iterdir()} >= {
      "state", "data", "teacher"}
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["mode"] == "student" and saved["inputs"]["face_shape"] == [64, 64, 1]
  scalars = train.read_scalars(workdir)
  assert sorted(scalars["train/loss"]) == [1, 2, 3, 4]
  for tag in ("train/kd", "train/align", "train/ce", "train/accuracy", "train/agreement",
              "train/learning_rate", "train/steps_per_second"):
    assert sorted(scalars[tag]) == [1, 2, 3, 4], tag
  for tag in ("eval/accuracy", "eval/uar", "eval/agreement", "eval/teacher_accuracy"):
    assert sorted(scalars[tag]) == [2, 4], tag
  assert scalars["eval/uar"][4] == pytest.approx(student_runs["whole"]["eval"]["uar"])


def test_load_trained_gives_the_best_checkpoint_with_its_teacher(student_runs):
  workdir = student_runs["dir"] / "whole"
  scalars = train.read_scalars(workdir)["eval/uar"]
  trained = train.load_trained(str(workdir))
  assert trained.step == max(scalars, key=lambda s: (scalars[s], s))  # ties: the later one
  assert trained.config.mode == "student" and trained.teacher is not None
  # The restored variables fit the rebuilt modules (shapes only: no compilation needed).
  logmel = jax.ShapeDtypeStruct((2, 96, 64), np.float32)
  out = jax.eval_shape(trained.model.apply, trained.variables, logmel,
                       jax.ShapeDtypeStruct((2, 96), bool))
  assert out["logits"].shape == (2, 7) and out["aligned"].shape == (2, 128)
  faces = jax.ShapeDtypeStruct((2, 4, 64, 64, 1), np.uint8)
  teacher_out = jax.eval_shape(trained.teacher.apply, trained.teacher_variables, faces,
                               jax.ShapeDtypeStruct((2, 4), bool))
  assert teacher_out["embedding"].shape == (2, 128)
  np.testing.assert_array_equal(  # the teacher it learned from, as it was
      jax.tree.leaves(trained.teacher_variables)[0],
      jax.tree.leaves(train.load_trained(str(workdir), 2).teacher_variables)[0])


def test_predict_reproduces_the_trainers_evaluation(student_runs, demo):
  trained = train.load_trained(str(student_runs["dir"] / "whole"), latest=True)
  assert trained.step == 4
  out = inference.predict(trained, input_pipeline.open_split(demo, "kd_mh_demo", "validation"),
                          batch_size=2)
  assert out["student_logits"].shape == (3, 7) and out["teacher_logits"].shape == (3, 7)
  assert out["student_aligned"].shape == (3, 128) and out["has_face"].all()
  np.testing.assert_array_equal(out["index"], [0, 1, 2])
  labels = train.target_labels(out, "student")
  evaluation = student_runs["whole"]["eval"]
  assert np.mean(out["student_logits"].argmax(1) == labels) == pytest.approx(
      evaluation["accuracy"])
  assert np.mean(out["student_logits"].argmax(1) == out["teacher_logits"].argmax(1)) == (
      pytest.approx(evaluation["agreement"]))


def test_a_student_on_a_corpus_own_classes_distils_through_their_folding(demo, tmp_path):
  config = _student_config(demo)
  config.data.classes = "ravdess"  # eight classes: the demo's "fear" and "surprise" go unlabelled
  config.num_train_steps = 2
  result = train.train_and_evaluate(config, str(tmp_path / "native"))
  assert result["train"]["kd"] > 0 and math.isfinite(result["eval"]["uar"])
  trained = train.load_trained(str(tmp_path / "native"), latest=True)
  out = inference.predict(trained, input_pipeline.open_split(demo, "kd_mh_demo", "train"))
  assert out["student_logits"].shape == (14, 8) and out["teacher_logits"].shape == (14, 7)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  names = [ex["label_name"].decode() for ex in tfds.builder("kd_mh_demo", data_dir=demo)
           .as_dataset(split="train", shuffle_files=False).as_numpy_iterator()]
  ravdess = emotions.class_set("ravdess")
  expected = [ravdess.index(n) if n in ravdess else -1 for n in names]
  assert 0 < sum(e >= 0 for e in expected) < len(expected)  # some names match, some do not
  np.testing.assert_array_equal(out["label"], expected)
  with pytest.raises(ValueError, match="the teacher learns the seven"):
    teacher = load_config("teacher_finetune", f"runlocal,data_dir={demo},init=random")
    teacher.data.classes = "ravdess"
    train.train_and_evaluate(teacher, str(tmp_path / "teacher"))


@pytest.mark.slow  # about 35 s: a fresh process compiles the steps for 8 devices
def test_eight_devices_give_the_one_device_loss_and_params(student_runs, demo):
  """`kd-mh train` in a fresh process with 8 CPU devices (1 example each) vs the 1-device run.

  Both run with the entry points' XLA settings (tests/conftest.py imports `launch`): with
  YNNPACK fusion off in one and on in the other, weights differed by up to 1.6e-5 after 2 steps.
  """
  workdir = student_runs["dir"] / "eight"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  run = subprocess.run(
      [sys.executable, "-m", "launch.cli", "train",
       f"--config=configs/student_kd.py:runlocal,data_dir={demo},teacher=random",
       f"--workdir={workdir}", "--config.stop_after_steps=2"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "8 devices" in run.stderr and "kd-mh train: step 2" in run.stdout
  one, eight = train.read_scalars(student_runs["dir"] / "split"), train.read_scalars(workdir)
  for step in (1, 2):
    assert eight["train/loss"][step] == pytest.approx(one["train/loss"][step], abs=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               _params(workdir, 2), _params(student_runs["dir"] / "split", 2))


def test_non_finite_step_stops_training_and_keeps_the_last_good_checkpoint(student_runs, demo):
  workdir = student_runs["dir"] / "poisoned"
  shutil.copytree(student_runs["dir"] / "whole", workdir)
  config = _student_config(demo, num_train_steps=6)
  config.optimizer.learning_rate = float("nan")
  with pytest.raises(train.NonFiniteError, match=r"step 5: .*last good checkpoint is step 4"):
    train.train_and_evaluate(config, str(workdir))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
  jax.tree.map(np.testing.assert_array_equal, _params(workdir, 4),
               _params(student_runs["dir"] / "whole", 4))


def test_teacher_fine_tuning_trains_and_teaches_a_student(demo, tmp_path):
  teacher = load_config("teacher_finetune", f"runlocal,data_dir={demo},init=random")
  teacher.num_train_steps = 2
  result = train.train_and_evaluate(teacher, str(tmp_path / "teacher"))
  assert result["step"] == 2 and set(result["eval"]) == {"accuracy", "uar", "ce"}
  assert math.isfinite(result["train"]["loss"]) and result["train"]["grad_norm"] > 0
  trained = train.load_trained(str(tmp_path / "teacher"))
  assert set(trained.variables) == {"params", "batch_stats"} and trained.teacher is None

  # The student can learn from that teacher run: its workdir is a teacher source.
  config = _student_config(demo, stop_after_steps=1)
  config.teacher.init = str(tmp_path / "teacher")
  assert train.train_and_evaluate(config, str(tmp_path / "student"))["step"] == 1


def test_the_supervised_baseline_trains_from_labels_alone(demo, tmp_path):
  supervised = load_config("student_supervised", f"runlocal,data_dir={demo}")
  supervised.num_train_steps = 2
  result = train.train_and_evaluate(supervised, str(tmp_path / "supervised"))
  assert set(result["train"]) >= {"loss", "ce", "accuracy"} and "kd" not in result["train"]
  assert set(result["eval"]) == {"accuracy", "uar", "ce"}


def test_face_augmentation_flips_shifts_and_rescales_whole_clips():
  rng = np.random.default_rng(0)
  faces = jnp.asarray(rng.integers(0, 256, size=(16, 3, 8, 8, 1)), jnp.uint8)
  flip_only = train.FaceAugmentSpec(flip=True, shift_px=0, brightness=0.0, contrast=0.0)
  out = train.augment_faces(faces, jax.random.key(1), flip_only)
  x = np.asarray(faces, np.float32)
  flipped = [bool(np.array_equal(o, c[:, :, ::-1])) for o, c in zip(np.asarray(out), x)]
  kept = [bool(np.array_equal(o, c)) for o, c in zip(np.asarray(out), x)]
  assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
  full = train.FaceAugmentSpec(flip=True, shift_px=2, brightness=0.1, contrast=0.2)
  a = train.augment_faces(faces, jax.random.key(2), full)
  assert a.shape == faces.shape and a.dtype == jnp.float32
  assert float(a.min()) >= 0 and float(a.max()) <= 255
  assert np.array_equal(a, train.augment_faces(faces, jax.random.key(2), full))
  assert not np.array_equal(a, train.augment_faces(faces, jax.random.key(3), full))
  assert not train.FaceAugmentSpec(False, 0, 0.0, 0.0).active
