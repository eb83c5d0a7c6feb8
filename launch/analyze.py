"""kd-mh analyze: face emotion per frame before/after speaker isolation, and co-occurrence tables.

  kd-mh analyze --corpus=cremad --root=/data/CREMA-D/VideoFlash --out=out/analysis
  kd-mh analyze --video=talk.mp4 --video=other.mp4 --label=happy --out=out/analysis

For every clip the face teacher classifies each face of each sampled frame ("before": all faces,
as the original study did) and the speaker's face alone ("after": the speaker chosen as the corpus
build chooses it). Writes OUT/timelines/<clip>.png, OUT/fluctuation.csv (per clip and view:
label switches per second, entropies), OUT/cooccurrence.csv (per main emotion, the percentage of
the speaker's frames given to each emotion and the rank of each other emotion; printed),
OUT/cooccurrence_before.csv (the same over every face) and OUT/summary.json. The main emotion is
the clip's label (--label for --video clips). The teacher is the FER2013 mini-Xception unless
--workdir names a teacher or student run.

Exit codes: 0 when at least one clip was analysed, 1 when none was (or the FER2013 weights cannot
be had), 2 on misuse.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from data_prep import build
from data_prep import corpora
from data_prep import faces
from data_prep.corpora import folder
from data_prep.corpora.base import ClipSpec
from kd_mh import analysis
from kd_mh import emotions
from kd_mh.models import pretrained

_CORPUS = flags.DEFINE_string("corpus", None, f"one of: {', '.join(sorted(corpora.READERS))}")
_ROOT = flags.DEFINE_string("root", None, "the corpus root folder")
_VIDEO = flags.DEFINE_multi_string("video", None, "a video to analyse (repeatable), instead of "
                                   "--corpus/--root")
_LABEL = flags.DEFINE_string("label", None, "with --video: the main emotion of the videos")
_OUT = flags.DEFINE_string("out", None, "output directory (created; a rerun overwrites)")
_WORKDIR = flags.DEFINE_string("workdir", None, "a teacher or student run whose face model to use "
                               "(default: the FER2013 mini-Xception)")
_CLIPS = flags.DEFINE_integer("clips", None, "analyse only the first N clips")
_FPS = flags.DEFINE_float("fps", 10.0, "face sampling rate (frames per second)")
_MAX_DURATION = flags.DEFINE_float("max_duration_s", 60.0, "longer clips are capped to this")
_METHOD = flags.DEFINE_enum("speaker_method", "av", ["av", "cluster"],
                            "speaker isolation: av (mouth motion vs audio energy + size) or "
                            "cluster (k-means over face encodings, the original study's)")
_DETECTOR = flags.DEFINE_enum("detector", "hog", ["hog", "cnn"], "face_recognition detector")
_BATCH = flags.DEFINE_integer("batch_size", 64, "faces per teacher forward pass")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")


def _usage(message: str) -> app.UsageError:
  return app.UsageError(message, exitcode=2)


def _specs() -> list[ClipSpec]:
  if _VIDEO.value:
    if _CORPUS.value or _ROOT.value:
      raise _usage("give either --video or --corpus/--root, not both")
    try:
      label = emotions.from_name(_LABEL.value) if _LABEL.value else emotions.UNLABELLED
    except emotions.LabelError as e:
      raise _usage(f"--label: {e}") from None
    specs = []
    for path in _VIDEO.value:
      if not os.path.isfile(path):
        raise _usage(f"--video {path}: no such file")
      specs.append(ClipSpec(clip_id=folder.clip_id_of(pathlib.Path(path).name), corpus="video",
                            path=path, label=label, label_name=_LABEL.value or ""))
    return corpora.unique_clip_ids(specs)
  if _LABEL.value:
    raise _usage("--label applies to --video clips; a corpus gives its own labels")
  for flag in (_CORPUS, _ROOT):
    if not flag.value:
      raise _usage(f"--{flag.name} is required (or --video)")
  if _CORPUS.value not in corpora.READERS:
    raise _usage(f"unknown corpus {_CORPUS.value!r}; one of {', '.join(sorted(corpora.READERS))}")
  if not os.path.isdir(_ROOT.value):
    raise _usage(f"--root {_ROOT.value}: not a directory")
  try:
    specs = corpora.read_corpus(_CORPUS.value, _ROOT.value)
  except (ValueError, OSError) as e:  # the reader could not list the corpus at all
    raise _usage(f"{_CORPUS.value} at {_ROOT.value}: {e}") from None
  return specs


def main(argv):
  if len(argv) > 1:
    raise _usage(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _OUT.value:
    raise _usage("--out is required")
  if _CLIPS.value is not None and _CLIPS.value < 1:
    raise _usage(f"--clips must be >= 1, got {_CLIPS.value}")
  if _BATCH.value < 1:
    raise _usage(f"--batch_size must be >= 1, got {_BATCH.value}")
  specs = _specs()[:_CLIPS.value]  # None: all
  try:
    teacher = analysis.load_frame_teacher(_WORKDIR.value)
  except pretrained.PretrainedUnavailableError as e:
    print(f"kd-mh analyze: {e}", file=sys.stderr)
    return 1
  except ValueError as e:  # not a run, or a run without a face model
    raise _usage(f"--workdir: {e}") from None
  size, _, channels = teacher.face_shape
  config = build.PrepConfig(
      fps=_FPS.value, max_duration_s=_MAX_DURATION.value, speaker_method=_METHOD.value,
      face=dataclasses.replace(faces.FaceConfig(), model=_DETECTOR.value, crop_size=size,
                               crop_channels=channels))
  try:
    config.validate()
  except ValueError as e:
    raise _usage(str(e)) from None
  logging.info("%d clips; teacher: %s", len(specs), teacher.source)
  run = analysis.analyze(specs, _OUT.value, teacher, config, batch_size=_BATCH.value,
                         progress=_PROGRESS.value)
  summary = run.summary
  for skipped in summary["skipped"]:
    print(f"  skipped {skipped['clip_id']}: {skipped['reason']}")
  flux = summary["fluctuation"]
  print(f"kd-mh analyze: {summary['analyzed']} of {summary['clips']} clips analysed "
        f"(teacher: {teacher.source}) in {summary['seconds']} s")
  if summary["analyzed"] == 0:
    print("kd-mh analyze: no clip could be analysed; see the reasons above", file=sys.stderr)
    return 1
  for view in analysis.VIEWS:
    print(f"  {view:<16} mean switches/s {flux[view]['mean_switches_per_s']}, label entropy "
          f"{flux[view]['mean_label_entropy_bits']} bits")
  print(analysis.format_cooccurrence(
      run.cooccurrence[analysis.AFTER_SPEAKER],
      "co-occurrence (the speaker's face; % of frames, (rank) among the other emotions, "
      "[main emotion's own %]):"))
  print(f"outputs in {_OUT.value}")
  return 0
