"""kd-mh prep: build a corpus into speaker face tracks + log-mel TFRecords.

  kd-mh prep --corpus=cremad --root=/data/CREMA-D --out=/data/prepared/cremad

  kd-mh prep --corpus=cremad --root=/data/CREMA-D --out=/data/prepared/cremad \
      --runner=DirectRunner \
      --beam_options="--direct_num_workers=2 --direct_running_mode=multi_processing"

--runner=<a Beam runner> (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, PortableRunner)
processes the clips in an Apache Beam pipeline instead of the local process pool, with the same
outputs (data_prep/beam_build.py).

Privacy mode: with --store=embeddings no face pixels are written; each record keeps the teacher's
per-frame logits and embeddings of the speaker's face (--teacher_workdir, default the pretrained
FER2013 teacher), which is enough to distil a student and to evaluate it.

  kd-mh prep --corpus=cremad --root=/data/CREMA-D --out=/data/prepared/cremad_private \
      --store=embeddings --teacher_workdir=runs/teacher

With --corpus=demo and a --root that holds no demo corpus yet, the demo corpus is generated there
first (data_prep/synthetic.py).

Exit codes: 0 when at least one clip was written (skipped clips are listed in the manifest and the
summary), 1 when no clip succeeded, 2 on misuse (unknown corpus, missing root, bad option, an output
directory built with other options).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys

from absl import app
from absl import flags
from absl import logging

from data_prep import build
from data_prep import corpora
from data_prep import faces
from data_prep import features
from data_prep import synthetic
from data_prep.corpora import demo

_CORPUS = flags.DEFINE_string("corpus", None, f"one of: {', '.join(sorted(corpora.READERS))}")
_ROOT = flags.DEFINE_string("root", None, "the corpus root folder")
_OUT = flags.DEFINE_string("out", None, "output directory (created; a rerun resumes)")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1,
                                "parallel worker processes (with --runner=local)")
_RUNNER = flags.DEFINE_string(
    "runner", "local",
    "local (a process pool of --workers) or an Apache Beam runner: DirectRunner, DataflowRunner, "
    "FlinkRunner, SparkRunner, PortableRunner")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_options", "", "with a Beam --runner: its pipeline options, split like a shell command "
    "line, e.g. \"--direct_num_workers=2 --direct_running_mode=multi_processing\" or "
    "\"--project=P --region=R --temp_location=gs://B/tmp\"")
_FPS = flags.DEFINE_float("fps", 10.0, "face sampling rate (frames per second)")
_MAX_DURATION = flags.DEFINE_float("max_duration_s", 60.0, "longer clips are capped to this")
_METHOD = flags.DEFINE_enum("speaker_method", "av", ["av", "cluster"],
                            "speaker isolation: av (mouth motion vs audio energy + size) or "
                            "cluster (k-means over face encodings, largest cluster)")
_DETECTOR = flags.DEFINE_enum("detector", "hog", ["hog", "cnn"], "face_recognition detector")
_FACE_SIZE = flags.DEFINE_integer("face_size", 64, "side of the aligned face crops")
_FACE_CHANNELS = flags.DEFINE_enum("face_channels", "1", ["1", "3"], "1 grayscale, 3 RGB")
_N_MELS = flags.DEFINE_integer("n_mels", 64, "mel bins of the log-mel")
_STORE = flags.DEFINE_enum("store", "pixels", ["pixels", "embeddings"],
                           "pixels: the speaker's face crops; embeddings (privacy mode): only the "
                           "teacher's per-frame logits and embeddings of them, no face pixels")
_TEACHER = flags.DEFINE_string("teacher_workdir", None,
                               "with --store=embeddings: the trained teacher run (kd-mh train "
                               "--workdir) whose frame outputs are stored; default the pretrained "
                               "FER2013 teacher")
_REQUIRE_FACE = flags.DEFINE_bool("require_face", True, "skip video clips without any face")
_REQUIRE_AUDIO = flags.DEFINE_bool("require_audio", True, "skip video clips without audio")
_TIME_LIMIT = flags.DEFINE_float(
    "time_limit_s", 600.0, "with --runner=local: a clip still running after this many seconds (a "
    "hung decoder) is killed and skipped with the reason 'timed out after N s'; 0 for no limit")
_RETRY = flags.DEFINE_bool("retry_skipped", False, "reprocess clips skipped by an earlier run")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")
_DEMO_CLIPS = flags.DEFINE_integer(
    "demo_clips", 105, "with --corpus=demo: clips to generate when --root holds no demo corpus yet")
_DEMO_SEED = flags.DEFINE_integer("demo_seed", 0, "with --corpus=demo: generator seed")
# Reader options; each applies to the readers whose signature names it.
_READER_FLAGS = {
    "calm": flags.DEFINE_string("calm", None,
                                "label 'calm' (RAVDESS, folder CSVs): 'neutral' (default) or 'drop'"),
    "contempt": flags.DEFINE_string("contempt", None,
                                    "label 'contempt' (CK+-style faces, folder CSVs): 'drop' "
                                    "(default) or 'disgust'"),
    "boredom": flags.DEFINE_string("boredom", None,
                                   "label 'boredom' (EmoDB-style folder CSVs): 'drop' (default) or "
                                   "'neutral'"),
    "votes_csv": flags.DEFINE_string("votes", None,
                                     "CREMA-D summaryTable.csv (default: found under --root)"),
    "speaker_pattern": flags.DEFINE_string(
        "speaker_pattern", None, "faces corpus: regex whose first group is the subject in a file "
        "name (e.g. '^(S\\d+)_' for CK+), for subject-independent splits"),
    "seed": flags.DEFINE_integer("split_seed", None, "seed of the speaker-independent split"),
    "test_speakers": flags.DEFINE_list("test_speakers", None, "speakers forced into test"),
    "validation_speakers": flags.DEFINE_list("validation_speakers", None,
                                             "speakers forced into validation"),
}


# Corpora whose clips are videos by definition: a clip without a video stream is broken.
AUDIO_VISUAL_CORPORA = ("meld", "demo")


def _usage(message: str) -> app.UsageError:
  return app.UsageError(message, exitcode=2)


def prep_config() -> build.PrepConfig:
  from kd_mh import inference  # pylint: disable=import-outside-toplevel  (JAX: only when run)
  return build.PrepConfig(
      fps=_FPS.value, max_duration_s=_MAX_DURATION.value, speaker_method=_METHOD.value,
      require_face=_REQUIRE_FACE.value, require_audio=_REQUIRE_AUDIO.value,
      require_video=_CORPUS.value in AUDIO_VISUAL_CORPORA,
      face=dataclasses.replace(faces.FaceConfig(), model=_DETECTOR.value,
                               crop_size=_FACE_SIZE.value,
                               crop_channels=int(_FACE_CHANNELS.value)),
      logmel=features.LogMelConfig(n_mels=_N_MELS.value), store=_STORE.value,
      teacher=(_TEACHER.value or inference.FER2013) if _STORE.value == "embeddings" else "")


def reader_options(corpus: str) -> dict:
  accepted = inspect.signature(corpora.READERS[corpus]).parameters
  options = {}
  for name, flag in _READER_FLAGS.items():
    if flag.value is None:
      continue
    if name not in accepted:
      raise _usage(f"--{flag.name} does not apply to corpus {corpus!r}")
    options[name] = flag.value
  return options


def main(argv):
  if len(argv) > 1:
    raise _usage(f"unexpected arguments: {' '.join(argv[1:])}")
  for flag in (_CORPUS, _ROOT, _OUT):
    if not flag.value:
      raise _usage(f"--{flag.name} is required")
  if _CORPUS.value not in corpora.READERS:
    raise _usage(f"unknown corpus {_CORPUS.value!r}; one of {', '.join(sorted(corpora.READERS))}")
  if _CORPUS.value == "demo" and not os.path.exists(os.path.join(_ROOT.value, demo.GROUND_TRUTH)):
    if os.path.isdir(_ROOT.value) and os.listdir(_ROOT.value):
      raise _usage(f"--root {_ROOT.value} is not a demo corpus and not empty; give an empty or new "
                   "folder to generate the demo corpus in")
    print(f"generating the demo corpus ({_DEMO_CLIPS.value} clips) in {_ROOT.value}")
    synthetic.make_demo_corpus(_ROOT.value, n_clips=_DEMO_CLIPS.value, seed=_DEMO_SEED.value,
                               progress=_PROGRESS.value)
  if not os.path.isdir(_ROOT.value):
    raise _usage(f"--root {_ROOT.value}: not a directory")
  if _TEACHER.value and _STORE.value != "embeddings":
    raise _usage("--teacher_workdir applies to --store=embeddings only")
  config = prep_config()
  try:
    config.validate()
  except ValueError as e:
    raise _usage(str(e)) from None
  clip_runner = None
  if _RUNNER.value != "local":
    from data_prep import beam_build  # pylint: disable=import-outside-toplevel  (Beam: only here)
    try:
      clip_runner = beam_build.clip_runner(
          beam_build.pipeline_options(_RUNNER.value, _BEAM_OPTIONS.value), _OUT.value)
    except ValueError as e:
      raise _usage(str(e)) from None
    if _TIME_LIMIT.present:
      raise _usage("--time_limit_s applies to --runner=local; a Beam runner processes each clip "
                   "in its own worker process without a per-clip time limit")
  elif _BEAM_OPTIONS.value:
    raise _usage("--beam_options needs a Beam --runner (e.g. --runner=DirectRunner)")
  try:
    specs = corpora.read_corpus(_CORPUS.value, _ROOT.value, **reader_options(_CORPUS.value))
  except (ValueError, OSError) as e:  # the reader could not list the corpus at all
    raise _usage(f"{_CORPUS.value} at {_ROOT.value}: {e}") from None
  logging.info("%s: %d clips listed", _CORPUS.value, len(specs))
  try:
    summary = build.build(specs, _OUT.value, config, workers=_WORKERS.value, corpus=_CORPUS.value,
                          retry_skipped=_RETRY.value, progress=_PROGRESS.value,
                          time_limit_s=_TIME_LIMIT.value or None, clip_runner=clip_runner)
  except build.BuildError as e:
    raise _usage(str(e)) from None
  print(build.format_summary(summary))
  if summary["ok"] == 0:
    print("kd-mh prep: no clip succeeded; see the reasons above and in "
          f"{os.path.join(_OUT.value, 'manifest.jsonl')}", file=sys.stderr)
    return 1
  return 0
