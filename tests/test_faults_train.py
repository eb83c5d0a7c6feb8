"""Training under faults: damaged checkpoints, SIGKILL and resume, several processes.

The damaged-checkpoint tests copy the session's tiny student run (`tiny_runs`, checkpoints 2 and
4) and damage it; the SIGKILL and multi-process runs start `kd-mh train` in fresh processes
(benchmarks/reliability.py drives them) and are marked slow.
"""

import hashlib
import logging
import shutil
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

from benchmarks import reliability
from conftest import load_config
from kd_mh import train


def _student_config(tiny_runs, demo_corpus):
  """The config `tiny_runs` trained its student with."""
  return load_config("student_kd", f"runlocal,data_dir={demo_corpus['data_dir']},"
                                   f"teacher={tiny_runs['teacher']}")


def test_tree_digest_known_answer_and_the_check_names_the_changed_array():
  tree = {"a": np.zeros(2, np.float32), "b": {"c": np.int32(7)}}
  digest = train.tree_digest(tree)
  zeros = hashlib.sha256(b"<f4(2,)" + bytes(8)).hexdigest()
  assert digest == {"['a']": zeros,
                    "['b']['c']": hashlib.sha256(b"<i4()" + (7).to_bytes(4, "little")).hexdigest()}
  train._check_digest({"state": tree}, {"state": digest})  # pylint: disable=protected-access
  changed = {"a": np.float32([0, 1e-30]), "b": {"c": np.int32(7)}}
  with pytest.raises(train.CheckpointError, match=r"state\['a'\] differs from the digest"):
    train._check_digest({"state": changed}, {"state": digest})  # pylint: disable=protected-access


def test_a_garbled_latest_checkpoint_is_passed_over_and_training_goes_on(
    tiny_runs, demo_corpus, tmp_path, caplog):
  workdir = tmp_path / "student"
  shutil.copytree(tiny_runs["student"], workdir)
  # Step 2's state in step 4's place: orbax restores it without complaint; the digest does not.
  reliability.damage(workdir / "checkpoints" / "4", "swap")
  caplog.set_level(logging.WARNING)
  for latest in (True, False):
    assert train.load_trained(str(workdir), latest=latest).step == 2
  assert "checkpoints/4 is unreadable (CheckpointError: state.step differs from the digest" in (
      caplog.text)
  assert "using checkpoint 2 instead of the unreadable 4" in caplog.text
  with pytest.raises(train.CheckpointError, match="step 4: CheckpointError: state.step differs"):
    train.load_trained(str(workdir), step=4)

  caplog.clear()
  result = train.train_and_evaluate(_student_config(tiny_runs, demo_corpus), str(workdir))
  assert result["step"] == 4 and "checkpoints/4 is unreadable" in caplog.text
  assert sorted(p.name for p in (workdir / "unreadable_checkpoints").iterdir()) == ["4"]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
  # Steps 3 and 4 trained again from checkpoint 2: the uninterrupted run's step 4, bit for bit.
  assert reliability.params_equal(reliability.final_params(workdir, 4),
                                  reliability.final_params(tiny_runs["student"], 4))


def test_a_checkpoint_that_lost_its_digest_is_unreadable(tiny_runs, tmp_path, caplog):
  workdir = tmp_path / "student"
  shutil.copytree(tiny_runs["student"], workdir)
  shutil.rmtree(workdir / "checkpoints" / "4" / "digest")  # unverifiable: not taken as it is
  caplog.set_level(logging.WARNING)
  assert train.load_trained(str(workdir), latest=True).step == 2
  assert "checkpoints/4 is unreadable (CheckpointError: " in caplog.text
  assert "the digest saved with it is missing" in caplog.text


@pytest.mark.parametrize("how", ["garble", "truncate", "delete"])
def test_every_checkpoint_unreadable_is_an_error_not_a_fresh_start(
    tiny_runs, demo_corpus, tmp_path, how):
  workdir = tmp_path / "student"
  shutil.copytree(tiny_runs["student"], workdir)
  for step in ("2", "4"):
    reliability.damage(workdir / "checkpoints" / step, how)
  pattern = r"no checkpoint in .* could be restored: step 4: .*; step 2: "
  with pytest.raises(train.CheckpointError, match=pattern):
    train.train_and_evaluate(_student_config(tiny_runs, demo_corpus), str(workdir))
  with pytest.raises(train.CheckpointError, match=pattern):
    train.load_trained(str(workdir), latest=True)
  # Nothing was set aside or overwritten: the damaged checkpoints stay for a person to look at.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
  assert not (workdir / "unreadable_checkpoints").exists()


def test_an_unfinished_save_is_no_step_and_a_rerun_removes_it(tiny_runs, demo_corpus, tmp_path):
  workdir = tmp_path / "student"
  shutil.copytree(tiny_runs["student"], workdir)
  unfinished = workdir / "checkpoints" / "6.orbax-checkpoint-tmp"
  shutil.copytree(workdir / "checkpoints" / "4" / "data", unfinished / "data")  # half written
  assert train.load_trained(str(workdir), latest=True).step == 4
  # The run is finished (4 of 4 steps): rerunning it only opens the checkpoints, cleaning up.
  assert train.train_and_evaluate(_student_config(tiny_runs, demo_corpus),
                                  str(workdir))["step"] == 4
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]


@pytest.mark.slow  # about 4 min on 2 cores: five fresh `kd-mh train` processes
def test_kill_9_at_three_steps_and_resume_equals_the_uninterrupted_run(demo_corpus, tmp_path):
  data_dir, steps = demo_corpus["data_dir"], 8
  env = reliability.child_env(tmp_path / "jax_cache")
  log = tmp_path / "train.log"
  reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
  assert reliability.run_train(reliability.train_command(data_dir, reference, steps), env,
                               log) == 0, log.read_text()[-3000:]
  command = reliability.train_command(data_dir, killed, steps)
  chosen = reliability.kill_steps(steps, seed=0)
  assert len(set(chosen)) == 3 and all(1 < s < steps for s in chosen)
  kills = [reliability.kill_during_training(command, env, killed, s, log) for s in chosen]
  assert [k["step"] >= s for k, s in zip(kills, chosen)] == [True] * 3
  assert reliability.run_train(command, env, log) == 0, log.read_text()[-3000:]
  assert reliability.params_equal(reliability.final_params(killed, steps),
                                  reliability.final_params(reference, steps))
  # No unfinished save is left behind, and every step's logged loss is the uninterrupted one's.
  assert all(p.name.isdigit() for p in (killed / "checkpoints").iterdir())
  assert (train.read_scalars(killed)["train/loss"]
          == train.read_scalars(reference)["train/loss"])


@pytest.mark.slow  # about 3 min on 2 cores: three fresh processes compile the steps
def test_two_processes_of_four_devices_train_like_one_process_of_eight(demo_corpus, tmp_path):
  """`kd-mh train --jax_distributed` in 2 processes (coordinator on 127.0.0.1) against 1 process,
  both on 8 CPU devices with the same global batch of 8: one example per device either way.

  The tolerance is that of tests/test_train.py's 8-vs-1-device test: the gradient all-reduce
  crosses processes in one run and not in the other, and its float32 sums may be ordered
  differently.
  """
  command = ["--config=configs/student_kd.py:runlocal,"
             f"data_dir={demo_corpus['data_dir']},teacher=random",
             "--config.stop_after_steps=2"]

  def start(workdir, devices, *extra):
    env = reliability.child_env(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, "-m", "launch.cli", "train", *command,
                             f"--workdir={workdir}", *extra],
                            cwd=reliability.ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

  port = portpicker.pick_unused_port()
  procs = [start(tmp_path / "two", 4, "--jax_distributed",
                 f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={pid}") for pid in range(2)]
  outs = [proc.communicate(timeout=600) for proc in procs]
  for proc, (_, stderr) in zip(procs, outs):
    assert proc.returncode == 0, stderr[-3000:]
  assert "8 devices, 4 per process" in outs[0][1]
  one = start(tmp_path / "one", 8)
  _, stderr = one.communicate(timeout=600)
  assert one.returncode == 0, stderr[-3000:]
  assert "8 devices, 8 per process" in stderr
  two, eight = train.read_scalars(tmp_path / "two"), train.read_scalars(tmp_path / "one")
  for step in (1, 2):
    assert two["train/loss"][step] == pytest.approx(eight["train/loss"][step], abs=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               reliability.final_params(tmp_path / "two", 2),
               reliability.final_params(tmp_path / "one", 2))
