"""Reliability of corpus preparation under faults: kill -9 mid-build, and bad inputs.

  python benchmarks/reliability.py [--data=../shared/data] [--work=/tmp/kd_mh_reliability]
      [--faults=8] [--cases=200] [--workers=2] [--seed=0]

* prep_faults: `kd-mh prep` on a folder corpus of the real CREMA-D clips is killed (SIGKILL to its
  whole process group: the main process and its workers) at seeded moments after its first
  manifest lines, every other time (the first included) also with the manifest's last line torn
  as a write cut short leaves it; while it runs, a second build into the same directory must be
  refused. The same command is then rerun and its output compared with an uninterrupted build's:
  each clip exactly once in the manifest, each ok record the same and exactly once in the shards.
* bad_inputs: the ~200 cases of data_prep/fuzz.py through the real build.

Prints a table of the counts; goals: every fault survived, every bad input handled, no good
example lost.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

from data_prep import build
from data_prep import corpora
from data_prep import fuzz
from kd_mh import records

REPO = pathlib.Path(__file__).resolve().parents[1]


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
  return subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
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
  """Whether two records hold the same example (field by field: protobuf map order is free)."""
  features = records.features()  # the prep defaults, as `_prep` runs it
  first, second = (records.parse_example(p.read_bytes(), features) for p in (a, b))
  return first.keys() == second.keys() and all(
      np.array_equal(np.asarray(first[k]), np.asarray(second[k])) for k in first)


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
    torn = fault % 2 == 0 and _tear_last_line(out, rng)
    counts["torn_lines_injected"] += torn

    rerun = subprocess.run(_prep(root, out, workers), cwd=REPO, capture_output=True, text=True)
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
          "clips": len(clip_ids), "kill_window_s": round(window, 2), "problems": problems}


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                      help="the real test data (CREMA-D and RAVDESS clips)")
  parser.add_argument("--work", default="/tmp/kd_mh_reliability", help="a new folder")
  parser.add_argument("--faults", type=int, default=8, help="kill -9 moments")
  parser.add_argument("--cases", type=int, default=200, help="bad-input cases (all: ~220)")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  work = pathlib.Path(args.work)
  if work.exists():
    parser.error(f"--work {work} exists; give a new folder")
  faults = prep_faults(pathlib.Path(args.data) / "cremad", work / "faults", args.faults, args.seed,
                       args.workers)
  print(_table("prep: kill -9 during a build, then the same command again", faults))
  bad = bad_inputs(args.data, work / "bad_inputs", args.cases, args.seed, args.workers)
  print(_table("prep: bad inputs through the real build", bad))


if __name__ == "__main__":
  main()
