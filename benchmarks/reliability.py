"""Reliability under faults: training killed with SIGKILL and resumed, corrupted checkpoints.

  python benchmarks/reliability.py [--work=/tmp/kd_mh_reliability] [--steps=8] [--seed=0]

Training (`train_faults`), on the `runlocal` student of configs/student_kd.py (randomly initialised
teacher, so offline) over a generated 20-clip demo corpus, every step checkpointed:
  uninterrupted  `kd-mh train` run to the end once: the reference
  kill -9        the same command in a fresh workdir, killed with SIGKILL as soon as the workdir
                 shows a checkpoint (finished or being written) of each of 3 steps drawn from
                 `--seed`, and rerun after each kill; then rerun to the end
  corrupted      a copy of the reference with its latest checkpoint damaged (its array files garbled
                 or truncated, its OCDBT manifest deleted, or its state swapped for the one of the
                 step before), rerun: it must go back to the checkpoint before,
                 with a warning naming the step, and train the last step again; and a copy with
                 every checkpoint damaged, which must fail with an error rather than start afresh
A fault is survived when the rerun ends with status 0 (the all-damaged copy: status 2 with the
error) and the run's final parameters equal the reference's bit for bit.

Each `kd-mh train` runs in a child process with a JAX compilation cache under --work, so only the
first compiles the steps. The last line of output is the whole result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]


def build_demo_corpus(out: pathlib.Path) -> str:
  """The tests' demo corpus (tests/conftest.py `demo_corpus`) under `out`: its tfds directory."""
  from data_prep import build  # pylint: disable=import-outside-toplevel
  from data_prep import corpora  # pylint: disable=import-outside-toplevel
  from data_prep import synthetic  # pylint: disable=import-outside-toplevel
  synthetic.make_demo_corpus(out / "corpus", n_clips=20, seed=0, duration_s=2.0, progress=False)
  summary = build.build(corpora.read_corpus("demo", str(out / "corpus")), out / "prepared",
                        workers=1, corpus="demo", progress=False)
  return summary["tfds_data_dir"]


def train_command(data_dir: str, workdir: pathlib.Path, steps: int,
                  extra: Sequence[str] = ()) -> list[str]:
  """`kd-mh train` of the runlocal student for `steps` steps, a checkpoint every step."""
  return [sys.executable, "-m", "launch.cli", "train",
          f"--config=configs/student_kd.py:runlocal,data_dir={data_dir},teacher=random",
          f"--workdir={workdir}", f"--config.num_train_steps={steps}",
          "--config.checkpoint_every_steps=1", *extra]


def child_env(cache_dir: Optional[pathlib.Path] = None, **extra: str) -> dict[str, str]:
  """The environment of a training child: CPU, this checkout first on the path, and optionally a
  persistent compilation cache shared by the children."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
         **extra}
  if cache_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  return env


def run_train(command: Sequence[str], env: dict[str, str], log: pathlib.Path,
              timeout: float = 600) -> int:
  """Runs a training command to its end, its output in `log`; its exit status."""
  with open(log, "ab") as out:
    return subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                          timeout=timeout, check=False).returncode


def checkpoint_progress(workdir: pathlib.Path) -> tuple[int, bool]:
  """(highest step with a checkpoint directory, finished or being written; whether that one is
  still being written), (0, False) before the first."""
  best = (0, False)
  for entry in (workdir / "checkpoints").glob("*"):
    head, _, tail = entry.name.partition(".")
    if head.isdigit():
      best = max(best, (int(head), bool(tail)))
  return best


def kill_during_training(command: Sequence[str], env: dict[str, str], workdir: pathlib.Path,
                         step: int, log: pathlib.Path, timeout: float = 600) -> dict[str, Any]:
  """Starts `command` and SIGKILLs it as soon as `workdir` shows a checkpoint of `step` or later.

  Returns {"step": the step seen, "during_save": whether its checkpoint was still being written}.
  """
  with open(log, "ab") as out:
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + timeout
  try:
    while True:
      seen, writing = checkpoint_progress(workdir)
      if seen >= step:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"step": seen, "during_save": writing}
      if proc.poll() is not None:
        raise RuntimeError(f"training ended (status {proc.returncode}) before step {step}; "
                           f"see {log}")
      if time.monotonic() > deadline:
        raise TimeoutError(f"no checkpoint of step {step} after {timeout} s; see {log}")
      time.sleep(0.02)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def kill_steps(steps: int, seed: int, n: int = 3) -> list[int]:
  """`n` distinct steps in 2 .. steps - 1, drawn from `seed`, in increasing order."""
  return sorted(random.Random(seed).sample(range(2, steps), n))


def final_params(workdir: pathlib.Path, step: int) -> Any:
  """The trained model's variables at checkpoint `step`, as numpy arrays."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from kd_mh import train  # pylint: disable=import-outside-toplevel
  return jax.tree.map(np.asarray, train.load_trained(str(workdir), step).variables)


def params_equal(a: Any, b: Any) -> bool:
  """Whether two pytrees of arrays have the same structure and bit-identical leaves."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def _array_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The OCDBT data files holding a checkpoint's train state arrays."""
  files = sorted(p for p in (step_dir / "state").glob("**/d/*") if p.is_file())
  if not files:
    raise FileNotFoundError(f"no array data files under {step_dir / 'state'}")
  return files


def damage(step_dir: pathlib.Path, how: str) -> list[pathlib.Path]:
  """Damages the train state of a checkpoint; the files hit.

  "garble" flips 16 bytes at a quarter, half and three quarters of every array data file (a data
  file may hold bytes no read touches, so one spot is not enough), "truncate" halves every one,
  "delete" removes the state's OCDBT manifest, "swap" puts the state of the checkpoint before in
  its place (whole and valid: only the digest tells it from the real one).
  """
  if how == "swap":
    earlier = max((p for p in step_dir.parent.iterdir()
                   if p.name.isdigit() and int(p.name) < int(step_dir.name)),
                  key=lambda p: int(p.name))
    shutil.rmtree(step_dir / "state")
    shutil.copytree(earlier / "state", step_dir / "state")
    return [step_dir / "state"]
  if how == "delete":
    target = step_dir / "state" / "manifest.ocdbt"
    target.unlink()
    return [target]
  targets = _array_files(step_dir)
  for target in targets:
    data = bytearray(target.read_bytes())
    if how == "garble":
      for spot in (len(data) // 4, len(data) // 2, 3 * len(data) // 4):
        data[spot:spot + 16] = bytes(b ^ 0xFF for b in data[spot:spot + 16])
    elif how == "truncate":
      del data[len(data) // 2:]
    else:
      raise ValueError(f"unknown damage {how!r}: garble, truncate, delete or swap")
    target.write_bytes(bytes(data))
  return targets


def train_faults(work: pathlib.Path, steps: int = 8, seed: int = 0,
                 data_dir: Optional[str] = None) -> dict[str, Any]:
  """Runs the training fault scenarios (module docstring) in `work`; counts and details.

  Returns {"faults_injected", "faults_survived", "runs_differing" (final parameters not equal to
  the uninterrupted run's: must be 0), "kills": [{"step", "during_save"}], "corruptions":
  [{"damage", "status", "fell_back", "equal"}], "all_damaged": {"status", "error"}, "seconds"}.
  """
  start = time.monotonic()
  work.mkdir(parents=True, exist_ok=True)
  if data_dir is None:
    data_dir = build_demo_corpus(work / "demo")
  env = child_env(work / "jax_cache")
  log = work / "train.log"
  reference = work / "uninterrupted"
  shutil.rmtree(reference, ignore_errors=True)
  if run_train(train_command(data_dir, reference, steps), env, log):
    raise RuntimeError(f"the uninterrupted run failed; see {log}")
  expected = final_params(reference, steps)
  injected = survived = differing = 0

  killed = work / "killed"
  shutil.rmtree(killed, ignore_errors=True)
  command = train_command(data_dir, killed, steps)
  kills = []
  for step in kill_steps(steps, seed):
    kills.append(kill_during_training(command, env, killed, step, log))
    injected += 1
  status = run_train(command, env, log)
  equal = status == 0 and params_equal(final_params(killed, steps), expected)
  survived += len(kills) if equal else 0
  differing += not equal

  corruptions = []
  for how in ("garble", "truncate", "delete", "swap"):
    copy = work / f"corrupted_{how}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(reference, copy)
    damage(copy / "checkpoints" / str(steps), how)
    injected += 1
    before = log.stat().st_size
    status = run_train(train_command(data_dir, copy, steps), env, log)
    output = log.read_bytes()[before:].decode(errors="replace")
    fell_back = (f"checkpoints/{steps} is unreadable" in output
                 and (copy / "unreadable_checkpoints" / str(steps)).is_dir())
    equal = status == 0 and params_equal(final_params(copy, steps), expected)
    corruptions.append({"damage": how, "status": status, "fell_back": fell_back, "equal": equal})
    survived += fell_back and equal
    differing += not equal

  every = work / "all_damaged"
  shutil.rmtree(every, ignore_errors=True)
  shutil.copytree(reference, every)
  for step_dir in (every / "checkpoints").iterdir():
    damage(step_dir, "garble")
  injected += 1
  before = log.stat().st_size
  status = run_train(train_command(data_dir, every, steps), env, log)
  output = log.read_bytes()[before:].decode(errors="replace")
  error = next((line for line in output.splitlines() if "could be restored" in line), "")
  all_damaged = {"status": status, "error": error[:300]}
  survived += status == 2 and bool(error)
  return {"faults_injected": injected, "faults_survived": survived, "runs_differing": differing,
          "kills": kills, "corruptions": corruptions, "all_damaged": all_damaged,
          "seconds": round(time.monotonic() - start, 1)}


def print_train_faults(result: dict[str, Any]) -> None:
  print(f"\n{'training fault':<34} {'outcome':<44}")
  for kill in result["kills"]:
    print(f"{'kill -9 at step %d' % kill['step']:<34} "
          f"{'during a save' if kill['during_save'] else 'between saves':<44}")
  for c in result["corruptions"]:
    outcome = (f"status {c['status']}, fell back: {c['fell_back']}, final params equal: "
               f"{c['equal']}")
    print(f"{'latest checkpoint: ' + c['damage']:<34} {outcome:<44}")
  print(f"{'every checkpoint garbled':<34} status {result['all_damaged']['status']}: "
        f"{result['all_damaged']['error'][:80]}")
  print(f"\nfaults injected {result['faults_injected']}, survived {result['faults_survived']}, "
        f"runs whose final params differ from the uninterrupted run: {result['runs_differing']} "
        f"({result['seconds']:.0f} s)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                     "kd_mh_reliability"))
  parser.add_argument("--steps", type=int, default=8, help="training steps of each run")
  parser.add_argument("--seed", type=int, default=0, help="picks the steps to kill at")
  args = parser.parse_args()
  result = train_faults(pathlib.Path(args.work), steps=args.steps, seed=args.seed)
  print_train_faults(result)
  print(json.dumps({"train": result}))


if __name__ == "__main__":
  main()
