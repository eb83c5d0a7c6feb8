"""RAVDESS speaker-independent speech emotion benchmark: train on some actors, test on others.

  python -m launch.ravdess_uar --root=/data/RAVDESS --out=runs/ravdess \
      --test_actors=17,18,19,20,21,22,23,24 \
      --faces_corpus=cremad --faces_root=/data/CREMA-D

Prepares the speech of the chosen actors (the test actors' clips form the test split, every
other chosen actor's the train split), trains the default student in up to three ways
(supervised, kd_labels, kd_only: see `kd_mh.ravdess_benchmark`) and scores each at its last step
on the held-out actors; nothing is tuned on them.

Writes OUT/speech, OUT/faces (prepared corpora), OUT/runs/<run>/ (training workdirs) and
OUT/results.json + OUT/results.md: accuracy and unweighted average recall (UAR) on the test
actors, 8-class and folded to 7, per-class recall, UAR with each test actor's scores standardised
over their own utterances (transductive; see `kd_mh.ravdess_benchmark`), and for the distillation
runs the student's top-1 agreement with the teacher on the training clips; and the same figures
of a reference baseline on the same split, MFCC statistics with a linear classifier
(`kd_mh.ravdess_benchmark.reference_score`).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

from kd_mh import ravdess_benchmark as bench
from kd_mh import train

_ROOT = flags.DEFINE_string("root", None, "RAVDESS root (Actor_XX folders of .wav or .flac)")
_OUT = flags.DEFINE_string("out", None, "output directory (a rerun resumes what is there)")
_TEST = flags.DEFINE_list("test_actors", ["09", "10", "11", "12"], "actors held out for testing")
_TRAIN = flags.DEFINE_list("train_actors", None,
                           "actors to train on (default: every other actor under --root)")
_RUNS = flags.DEFINE_list("runs", list(bench.RUNS), f"which runs: {', '.join(bench.RUNS)}")
_FACES_CORPUS = flags.DEFINE_string("faces_corpus", "cremad",
                                    "face corpus lending faces to the distillation runs")
_FACES_ROOT = flags.DEFINE_string("faces_root", None,
                                  "its root (needed by kd_labels and kd_only)")
_STEPS = flags.DEFINE_integer("steps", 1500, "training steps per run")
_SEED = flags.DEFINE_integer("seed", 0, "seed of every run")
_RUNLOCAL = flags.DEFINE_bool("runlocal", False,
                              "the configs' tiny local mode (a smoke run, not a benchmark)")
_WORKERS = flags.DEFINE_integer("workers", 2, "corpus preparation worker processes")
_OVERRIDES = flags.DEFINE_multi_string(
    "set", [], "config override FIELD=VALUE applied to every run, e.g. --set=batch_size=16")


def actor_id(value: str) -> str:
  """'7' or '07' -> '07' (RAVDESS speaker ids are two digits)."""
  if not value.strip().isdigit():
    raise app.UsageError(f"actor {value!r} is not a number", exitcode=2)
  return f"{int(value):02d}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
  for flag in (_ROOT, _OUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required", exitcode=2)
  unknown = sorted(set(_RUNS.value) - set(bench.RUNS))
  if unknown:
    raise app.UsageError(f"unknown runs {unknown}; choose from {', '.join(bench.RUNS)}", exitcode=2)
  distilled = [r for r in _RUNS.value if r != "supervised"]
  if distilled and not _FACES_ROOT.value:
    raise app.UsageError(f"runs {distilled} distil from faces: give --faces_root (a "
                         f"{_FACES_CORPUS.value} corpus) or --runs=supervised", exitcode=2)
  test_actors = [actor_id(a) for a in _TEST.value]
  train_actors = [actor_id(a) for a in _TRAIN.value] if _TRAIN.value else None
  both = sorted(set(test_actors) & set(train_actors or []))
  if both:
    raise app.UsageError(f"actors {both} are in both --train_actors and --test_actors", exitcode=2)
  logging.set_verbosity(logging.INFO)
  out = pathlib.Path(_OUT.value)
  try:
    prepared = bench.prepare(out, _ROOT.value, train_actors, test_actors, _FACES_CORPUS.value,
                             _FACES_ROOT.value if distilled else None, _WORKERS.value)
  except ValueError as e:
    raise app.UsageError(str(e), exitcode=2) from None
  speech_dir = prepared["speech"]["tfds_data_dir"]
  faces_dir = prepared["faces"]["tfds_data_dir"] if "faces" in prepared else None
  try:
    reference = bench.reference_score(speech_dir)
  except ValueError as e:
    raise app.UsageError(str(e), exitcode=2) from None
  results: dict[str, Any] = {
      "root": _ROOT.value, "test_actors": test_actors,
      "train_actors": sorted(set(train_actors or [])) or "all others",
      "splits": prepared["speech"]["splits"], "steps": _STEPS.value, "seed": _SEED.value,
      "reference": {bench.REFERENCE: reference}, "runs": {}}
  print(f"{bench.REFERENCE} (reference): "
        + json.dumps({k: reference[k] for k in ("uar", "accuracy", "uar_speaker_standardised")}))
  for run in _RUNS.value:
    config = bench.run_config(run, speech_dir, _FACES_CORPUS.value, faces_dir, _STEPS.value,
                              _SEED.value, _OVERRIDES.value, _RUNLOCAL.value)
    workdir = out / "runs" / run
    start = time.time()
    try:
      train.train_and_evaluate(config, str(workdir))
    except ValueError as e:  # a config or data problem, named by the message
      raise app.UsageError(f"run {run}: {e}", exitcode=2) from None
    results["runs"][run] = {**bench.score(workdir, speech_dir, faces_dir),
                            "train_seconds_this_invocation": round(time.time() - start, 1)}
    headline = {k: v for k, v in results["runs"][run].items()
                if k in ("uar", "accuracy", "uar_7", "uar_speaker_standardised", "train_agreement")}
    print(f"{run}: {json.dumps(headline)}")
    # After every run, so a long benchmark stopped part way keeps what it measured.
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(bench.results_table(results) + "\n")
  print(bench.results_table(results))
  print(f"written: {out / 'results.json'}, {out / 'results.md'}")
  return 0


if __name__ == "__main__":
  app.run(main)
