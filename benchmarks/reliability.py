"""Reliability under faults: corpus preparation and training killed with SIGKILL and rerun, bad
inputs, corrupted checkpoints.

  python benchmarks/reliability.py [--work=/tmp/kd_mh_reliability] [--parts=prep,train]
      [--data=../shared/data] [--faults=8] [--cases=200] [--workers=2] [--steps=8] [--seed=0]

Preparation (`prep_faults`, `bad_inputs`):
  kill -9        `kd-mh prep` on a folder corpus of the real CREMA-D clips is killed (SIGKILL to its
                 whole process group: the main process and its workers) at `--faults` seeded
                 moments after its first manifest lines, every other time (the first included)
                 also with the manifest's last line torn as a write cut short leaves it; while it
                 runs, a second build into the same directory must be refused. The same command is
                 then rerun and its output compared with an uninterrupted build's: each clip exactly
                 once in the manifest, each ok record the same and exactly once in the shards.
  bad inputs     `--cases` of the ~220 cases of data_prep/fuzz.py through the real build: each must
                 be reported in the manifest (ok, or skipped with a reason naming the file), none
                 may crash or hang the build, and no good clip may be lost.

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
import collections
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

import numpy as np

from data_prep import build
from data_prep import corpora
from data_prep import fuzz

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _prep(root: pathlib.Path, out: pathlib.Path, workers: int) -> list[str]:
  return [sys.executable, "-m", "launch.cli", "prep", "--corpus=folder", f"--root={root}",
          f"--out={out}", f"--workers={workers}", "--noprogress"]


def _lines(out: pathlib.Path) -> int:
  try:
    return (out / "manifest.jsonl").read_bytes().count(b"\n")
  except FileNotFoundError:
    return 0


def _start(command: list[str]) -> subprocess.Popen:
  # A session of its own: its process group holds the build and every worker it spawns.
  return subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_lines(process: subprocess.Popen, out: pathlib.Path, n: int) -> None:
  while process.poll() is None and _lines(out) < n:
    time.sleep(0.01)


def _kill_group(process: subprocess.Popen) -> None:
  os.killpg(process.pid, signal.SIGKILL)
  process.communicate()
  for _ in range(200):  # the workers, reparented, are gone once the group is empty
    try:
      os.killpg(process.pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.05)


def _tear_last_line(out: pathlib.Path, rng: np.random.Generator) -> bool:
  """Cuts the manifest inside its last line, as a write cut short leaves it."""
  path = out / "manifest.jsonl"
  data = path.read_bytes() if path.exists() else b""
  start = data.rstrip(b"\n").rfind(b"\n") + 1
  length = len(data.rstrip(b"\n")) - start
  if length < 2:
    return False
  path.write_bytes(data[:start + int(rng.integers(1, length))])
  return True


def _second_build_refused(specs, out: pathlib.Path, holder: int) -> bool:
  """Whether a build into `out` now fails fast, naming the lock and the running build's pid."""
  try:
    build.build(specs, out, workers=1, progress=False)
  except build.BuildError as e:
    return build.LOCK_FILE in str(e) and f"pid {holder}" in str(e)
  return False


def _same_record(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Whether two records are the same bytes (`records.write_example` is deterministic)."""
  return a.read_bytes() == b.read_bytes()


def prep_faults(root: str | os.PathLike, work: str | os.PathLike, n_faults: int = 8,
                seed: int = 0, workers: int = 2) -> dict[str, Any]:
  """kill -9 of `kd-mh prep --corpus=folder --root=root` at n_faults seeded moments, each
  followed by a rerun that must give what an uninterrupted build gives."""
  root, work = pathlib.Path(root), pathlib.Path(work)
  rng = np.random.default_rng(seed)
  specs = corpora.read_corpus("folder", str(root))
  clip_ids = [s.clip_id for s in specs]

  # The uninterrupted build: the answer, and how long clips take to come out (the kill window).
  reference = work / "reference"
  process = _start(_prep(root, reference, workers))
  _wait_for_lines(process, reference, 1)
  first_line = time.monotonic()
  _, stderr = process.communicate()
  window = time.monotonic() - first_line
  if process.returncode != 0:
    raise RuntimeError(f"the reference build failed ({process.returncode}): {stderr[-2000:]}")
  expected = build.read_manifest(reference / "manifest.jsonl")
  problems = [f"reference: {p}" for p in fuzz.check_output(reference, clip_ids)]

  counts = collections.Counter()
  kills = []  # when each kill came: seconds after the first manifest line, lines written by then
  for fault in range(n_faults):
    out = work / f"killed{fault}"
    delay = float(rng.uniform(0.0, 0.8 * window))
    process = _start(_prep(root, out, workers))
    _wait_for_lines(process, out, 1)
    counts["concurrent_builds_refused"] += _second_build_refused(specs, out, process.pid)
    time.sleep(delay)
    if process.poll() is not None:
      problems.append(f"fault {fault}: the build finished before the kill at +{delay:.2f} s")
      continue
    _kill_group(process)
    counts["faults_injected"] += 1
    lines_at_kill = _lines(out)
    kills.append(f"+{delay:.2f} s, {lines_at_kill} lines")
    torn = fault % 2 == 0 and _tear_last_line(out, rng)
    counts["torn_lines_injected"] += torn

    rerun = subprocess.run(_prep(root, out, workers), cwd=ROOT, capture_output=True, text=True)
    counts["torn_lines_warned"] += torn and "is torn" in rerun.stderr
    found = [f"rc {rerun.returncode}: {rerun.stderr[-500:]}"] if rerun.returncode else []
    found += fuzz.check_output(out, clip_ids)
    got = build.read_manifest(out / "manifest.jsonl")
    raw = (out / "manifest.jsonl").read_bytes().count(b"\n")
    counts["duplicate_lines"] += max(0, raw - len(got))
    lost = [i for i, line in expected.items()
            if line["status"] == "ok" and got.get(i, {}).get("status") != "ok"]
    counts["good_examples_lost"] += len(lost)
    found += [f"clip {i!r} was ok and is not" for i in lost]
    found += [f"clip {i!r}: its record differs from the uninterrupted build's" for i in expected
              if i not in lost and expected[i]["status"] == "ok"
              and not _same_record(out / "clips" / f"{i}.pb", reference / "clips" / f"{i}.pb")]
    problems += [f"fault {fault} (kill at +{delay:.2f} s, {lines_at_kill} lines, torn {torn}): {p}"
                 for p in found]
    counts["faults_survived"] += not found
  return {"faults_injected": counts["faults_injected"],
          "faults_survived": counts["faults_survived"],
          "torn_lines_injected": counts["torn_lines_injected"],
          "torn_lines_warned": counts["torn_lines_warned"],
          "concurrent_builds_refused": counts["concurrent_builds_refused"],
          "duplicate_lines": counts["duplicate_lines"],
          "good_examples_lost": counts["good_examples_lost"],
          "clips": len(clip_ids), "kill_window_s": round(window, 2), "kills": kills,
          "problems": problems}


def bad_inputs(data_dir: str | os.PathLike, work: str | os.PathLike, n_cases: int = 200,
               seed: int = 0, workers: int = 2, time_limit_s: float = 20.0) -> dict[str, Any]:
  """The fuzz cases through the real build: tried, handled, crashed, hung, good examples lost."""
  started = time.monotonic()
  outcomes = fuzz.run(work, data_dir, n_cases, seed, workers, time_limit_s)
  cases = [o for o in outcomes if o.case.kind != "build"]
  crashed = [o for o in cases if "crashed" in o.reason or "unexpected" in o.reason]
  return {
      "bad_inputs_tried": sum(o.case.kind != "good" for o in cases),
      "bad_inputs_handled": sum(o.case.kind != "good" and not o.problem for o in cases),
      "crashed": len(crashed),
      "timed_out": sum("timed out after" in o.reason for o in cases),
      "good_examples_lost": sum(o.case.expect == fuzz.OK and o.status != "ok" for o in cases),
      "by_kind": {kind: dict(collections.Counter(o.status for o in cases if o.case.kind == kind))
                  for kind in dict.fromkeys(o.case.kind for o in cases)},
      "seconds": round(time.monotonic() - started, 1),
      "problems": [f"{o.case.kind} {o.case.detail} ({o.case.file[:80]}): {o.problem}"
                   for o in outcomes if o.problem],
  }


def _table(title: str, result: dict[str, Any]) -> str:
  rows = [title]
  rows += [f"  {k:<28} {v}" for k, v in result.items() if k not in ("problems", "by_kind")]
  for kind, statuses in result.get("by_kind", {}).items():
    rows.append(f"    {kind:<26} " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
  rows += [f"  problem: {p}" for p in result["problems"]]
  return "\n".join(rows)


def build_demo_corpus(out: pathlib.Path) -> str:
  """The tests' demo corpus (tests/conftest.py `demo_corpus`) under `out`: its tfds directory."""
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
  from kd_mh import train  # pylint: disable=import-outside-toplevel
  return jax.tree.map(np.asarray, train.load_trained(str(workdir), step).variables)


def params_equal(a: Any, b: Any) -> bool:
  """Whether two pytrees of arrays have the same structure and bit-identical leaves."""
  import jax  # pylint: disable=import-outside-toplevel
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
  parser.add_argument("--parts", default="prep,train", help="prep, train or both")
  parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                      help="the real test data (CREMA-D and RAVDESS clips), for prep")
  parser.add_argument("--faults", type=int, default=8, help="prep: kill -9 moments")
  parser.add_argument("--cases", type=int, default=200, help="prep: bad-input cases (of ~220)")
  parser.add_argument("--workers", type=int, default=2, help="prep: worker processes")
  parser.add_argument("--steps", type=int, default=8, help="training steps of each run")
  parser.add_argument("--seed", type=int, default=0,
                      help="picks the kill moments, the steps to kill at and the bad inputs")
  args = parser.parse_args()
  parts = set(args.parts.split(","))
  unknown = parts - {"prep", "train"}
  if unknown:
    parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; prep, train or both")
  work = pathlib.Path(args.work)
  results = {}
  if "prep" in parts:
    for name in ("prep_faults", "bad_inputs"):
      shutil.rmtree(work / name, ignore_errors=True)
    results["prep_faults"] = prep_faults(pathlib.Path(args.data) / "cremad", work / "prep_faults",
                                         args.faults, args.seed, args.workers)
    print(_table("prep: kill -9 during a build, then the same command again",
                 results["prep_faults"]))
    results["bad_inputs"] = bad_inputs(args.data, work / "bad_inputs", args.cases, args.seed,
                                       args.workers)
    print(_table("prep: bad inputs through the real build", results["bad_inputs"]))
  if "train" in parts:
    results["train"] = train_faults(work / "train", steps=args.steps, seed=args.seed)
    print_train_faults(results["train"])
  print(json.dumps(results))


if __name__ == "__main__":
  main()
