"""kd-mh demo: the whole pipeline on the generated demo corpus, from nothing to two reports.

  kd-mh demo --workdir=out/demo_run

1. generates the demo corpus (talking synthetic faces with emotional synthetic voices; some clips
   incongruent by construction; three identities per packaged photograph, held out by
   photograph) in WORKDIR/corpus, unless it is already there;
2. prepares it (speaker face tracks, log-mel, TFRecords) into WORKDIR/prepared;
3. fine-tunes the FER2013 face teacher on the generated faces, with flips, shifts and
   brightness / contrast changes (WORKDIR/teacher);
4. distils the speech student from it (WORKDIR/student);
5. evaluates: calibration, congruent / incongruent pairs of the held-out test identities, ROC,
   threshold (WORKDIR/eval);
6. runs the detector on one congruent and one incongruent held-out clip (WORKDIR/reports/...),
and prints where everything is. Rerunning resumes: finished stages are kept (training resumes
from its checkpoints). `--quick` shrinks the corpus, the models (the configs' runlocal mode) and the schedules to a
smoke run (CI).

The demo corpus is synthetic: its figures show that the pipeline works end to end, not how well
any model reads real faces or voices.

Exit codes: 0 done, 1 a stage failed (the message says which), 2 on misuse.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

from data_prep import build
from data_prep import corpora
from data_prep import synthetic
from data_prep.corpora import demo as demo_corpus
from kd_mh import detect
from kd_mh import evaluate
from kd_mh import train

_WORKDIR = flags.DEFINE_string("workdir", None, "where every stage writes (created; a rerun "
                               "resumes)")
_QUICK = flags.DEFINE_bool("quick", False, "a small corpus and short schedules: a smoke run")
_SEED = flags.DEFINE_integer("seed", 0, "corpus generator and training seed")
flags.mark_flags_as_required(["workdir"])

# (full, quick) settings of each stage.
_CLIPS = (210, 42)
_VARIANTS = (3, 1)  # identities per photograph (synthetic.with_variants)
_TEACHER_STEPS = (200, 20)
_STUDENT_STEPS = (450, 40)


def _stage(title: str) -> float:
  print(f"\n== {title}", flush=True)
  return time.time()


def teacher_config(data_dir: str, steps: int, seed: int, quick: bool):
  """Fine-tuning of the FER2013 teacher on the demo faces: few frames per clip, small batches."""
  config = train.load_config("teacher_finetune",
                             f"corpus=demo,data_dir={data_dir},runlocal={quick}")
  if not quick:
    config.batch_size = config.eval_batch_size = 16
    config.data.max_frames = 4
  config.seed = seed
  config.num_train_steps = steps
  config.optimizer.learning_rate = 1e-3  # generated faces are far from FER2013's: move further
  config.augment.update(flip=True, shift_px=4, brightness=0.1, contrast=0.2)
  config.optimizer.warmup_steps = steps // 10
  config.log_every_steps = 10
  config.eval_every_steps = config.checkpoint_every_steps = steps
  return config


def student_config(data_dir: str, teacher_dir: str, steps: int, seed: int, quick: bool):
  """Distillation of the speech student from the fine-tuned teacher, with the demo's labels."""
  config = train.load_config(
      "student_kd", f"corpus=demo,data_dir={data_dir},teacher={teacher_dir},runlocal={quick}")
  if not quick:
    config.batch_size = config.eval_batch_size = 16
    config.data.max_frames = 4
    config.data.max_logmel_frames = 300  # the clips are 3 s
  config.seed = seed
  config.num_train_steps = steps
  config.optimizer.warmup_steps = steps // 10
  config.log_every_steps = 20
  config.eval_every_steps = config.checkpoint_every_steps = steps
  return config


def held_out_clips(corpus_root: pathlib.Path, prepared: pathlib.Path) -> dict[str, dict[str, Any]]:
  """One congruent and one incongruent test clip that preparation kept (ground truth records)."""
  kept = {clip_id for clip_id, line in build.read_manifest(prepared / "manifest.jsonl").items()
          if line["status"] == "ok"}
  truth = demo_corpus.read_ground_truth(corpus_root / demo_corpus.GROUND_TRUTH)
  chosen = {}
  for record in sorted(truth.values(), key=lambda r: r["clip_id"]):
    kind = "congruent" if record["congruent"] else "incongruent"
    if record["split"] == "test" and record["clip_id"] in kept and kind not in chosen:
      chosen[kind] = record
  missing = {"congruent", "incongruent"} - set(chosen)
  if missing:
    raise RuntimeError(f"the test split has no prepared {' or '.join(sorted(missing))} clip")
  return chosen


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
  logging.set_verbosity(logging.WARNING)
  try:
    return run(pathlib.Path(_WORKDIR.value), bool(_QUICK.value), _SEED.value)
  except (ValueError, RuntimeError, build.BuildError) as e:
    print(f"kd-mh demo: failed: {e}", file=sys.stderr)
    return 1


def run(work: pathlib.Path, quick: bool, seed: int) -> int:
  """Every stage, in order, in `work`; returns 0."""
  quick = int(quick)
  work.mkdir(parents=True, exist_ok=True)
  corpus_root, prepared = work / "corpus", work / "prepared"
  start = time.time()
  timings = {}

  t = _stage("1/6 demo corpus")
  if not (corpus_root / demo_corpus.GROUND_TRUTH).exists():
    synthetic.make_demo_corpus(corpus_root, n_clips=_CLIPS[quick], seed=seed,
                               variants=_VARIANTS[quick])
  timings["corpus"] = time.time() - t

  t = _stage("2/6 preparation")
  summary = build.build(corpora.read_corpus("demo", str(corpus_root)), prepared,
                        workers=os.cpu_count() or 1, corpus="demo")
  print(build.format_summary(summary))
  data_dir = summary["tfds_data_dir"]
  timings["prep"] = time.time() - t

  t = _stage("3/6 teacher: FER2013 fine-tuned on the demo faces")
  result = train.train_and_evaluate(
      teacher_config(data_dir, _TEACHER_STEPS[quick], seed, bool(quick)), str(work / "teacher"))
  print(f"teacher: step {result['step']}, validation {_metrics(result['eval'])}")
  timings["teacher"] = time.time() - t

  t = _stage("4/6 student: distilled from the teacher")
  result = train.train_and_evaluate(
      student_config(data_dir, str(work / "teacher"), _STUDENT_STEPS[quick], seed, bool(quick)),
      str(work / "student"))
  print(f"student: step {result['step']}, validation {_metrics(result['eval'])}")
  timings["student"] = time.time() - t

  t = _stage("5/6 evaluation: calibration, pairs, ROC, threshold")
  eval_config = train.load_config("evaluate", f"student={work / 'student'},runlocal={bool(quick)}")
  evaluation = evaluate.evaluate(eval_config, str(work / "eval"))
  print(evaluate.summary_table(evaluation["metrics"], evaluation["threshold"]))
  timings["evaluate"] = time.time() - t

  t = _stage("6/6 detection on two held-out clips")
  reports = {}
  for kind, record in held_out_clips(corpus_root, prepared).items():
    out = work / "reports" / f"{kind}_{record['clip_id'].replace('/', '_')}"
    report = detect.run(corpus_root / record["path"], work / "eval", out)
    reports[kind] = {"clip": record["clip_id"], "face": record["face_emotion"],
                     "voice": record["voice_emotion"], "verdict": report["verdict"],
                     "flagged_fraction": report["flagged_fraction"],
                     "html": str(out / "report.html")}
    print(f"{kind} clip {record['clip_id']} (face {record['face_emotion']}, voice "
          f"{record['voice_emotion']}): {report['verdict']} "
          f"(flagged fraction {report['flagged_fraction']})")
  timings["detect"] = time.time() - t
  timings["total"] = time.time() - start

  metrics = evaluation["metrics"]
  summary = {"workdir": str(work), "quick": bool(quick), "auc": metrics["auc"],
             "auc_ci": metrics["auc_ci"], "eer": metrics["eer"], "reports": reports,
             "seconds": {k: round(v, 1) for k, v in timings.items()}}
  (work / "demo_summary.json").write_text(json.dumps(summary, indent=2))
  print(f"\nheld-out AUC {metrics['auc']:.3f} (95% CI {metrics['auc_ci'][0]:.3f}-"
        f"{metrics['auc_ci'][1]:.3f}), EER {metrics['eer']:.3f}")
  for kind, r in reports.items():
    print(f"{kind:>11}: {r['verdict']:<32} {r['html']}")
  print(f"threshold and metrics: {work / 'eval'}; summary: {work / 'demo_summary.json'}; "
        f"{timings['total']:.0f} s in all")
  return 0


def _metrics(values: dict[str, float]) -> str:
  return ", ".join(f"{k} {v:.3f}" for k, v in values.items()) or "none"


if __name__ == "__main__":
  app.run(main)
