"""kd-mh detect: one video -> face/voice emotion timelines, divergence, flagged segments, verdict.

  kd-mh detect VIDEO --workdir=runs/eval --out=out/report

--workdir is an evaluation workdir (`kd-mh evaluate`): its threshold.json names the divergence,
the threshold, the calibration temperatures, the window grid and the student run (whose frozen
teacher reads the face). Writes into --out only: report.json, report.html (self-contained) and the
plots as PNGs. The verdict is "incongruent affect flagged", "no persistent incongruence" or
"insufficient evidence" (no usable speaker face, no speech, too short), always with its reason.
kd_mh is a research tool: a flagged segment means only that the face and voice models disagree.

Exit codes: 0 when the reports were written (whatever the verdict), 2 on misuse (flags, an
unreadable or non-media VIDEO, an evaluation workdir without a usable threshold.json: the message
names it).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from kd_mh import detect

_DEFAULTS = detect.DetectConfig()
_WORKDIR = flags.DEFINE_string("workdir", None, "evaluation workdir holding threshold.json")
_OUT = flags.DEFINE_string("out", None, "output directory for report.json, report.html, PNGs")
_PERSISTENCE = flags.DEFINE_float(
    "persistence", _DEFAULTS.persistence,
    "share of usable windows that must be flagged for the 'incongruent affect flagged' verdict")
_MIN_USABLE_WINDOWS = flags.DEFINE_integer(
    "min_usable_windows", _DEFAULTS.min_usable_windows,
    "fewer usable windows give 'insufficient evidence'")
_MIN_USABLE_FRACTION = flags.DEFINE_float(
    "min_usable_fraction", _DEFAULTS.min_usable_fraction,
    "usable windows making up less than this share of all give 'insufficient evidence'")
_MIN_FACE_FRACTION = flags.DEFINE_float(
    "min_face_fraction", _DEFAULTS.min_face_fraction,
    "share of a window's sampled frames that must show the speaker's face")
_MIN_SPEECH_FRACTION = flags.DEFINE_float(
    "min_speech_fraction", _DEFAULTS.min_speech_fraction,
    "share of a window's 10 ms frames that must be speech")
_SPEECH_FLOOR = flags.DEFINE_float(
    "speech_floor_dbfs", _DEFAULTS.speech_floor_dbfs,
    "speech frames are louder than white noise at this level (dB full scale)")
_SPEECH_RANGE = flags.DEFINE_float(
    "speech_range_db", _DEFAULTS.speech_range_db,
    "speech frames are within this many dB of the clip's loud frames")
_MIN_DURATION = flags.DEFINE_float("min_duration_s", _DEFAULTS.min_duration_s,
                                   "shorter videos give 'insufficient evidence'")
_MAX_DURATION = flags.DEFINE_float("max_duration_s", _DEFAULTS.max_duration_s,
                                   "longer videos are read up to this point")
_METHOD = flags.DEFINE_enum("speaker_method", _DEFAULTS.speaker_method, ["av", "cluster"],
                            "speaker isolation: av (mouth motion vs audio energy + size) or "
                            "cluster (k-means over face encodings, largest cluster)")


def _usage(message: str) -> app.UsageError:
  return app.UsageError(message, exitcode=2)


def _progress(line: str) -> None:
  print(f"kd-mh detect: {line}", flush=True)


def detect_config() -> detect.DetectConfig:
  return detect.DetectConfig(
      persistence=_PERSISTENCE.value, min_usable_windows=_MIN_USABLE_WINDOWS.value,
      min_usable_fraction=_MIN_USABLE_FRACTION.value, min_face_fraction=_MIN_FACE_FRACTION.value,
      min_speech_fraction=_MIN_SPEECH_FRACTION.value, speech_floor_dbfs=_SPEECH_FLOOR.value,
      speech_range_db=_SPEECH_RANGE.value, min_duration_s=_MIN_DURATION.value,
      max_duration_s=_MAX_DURATION.value, speaker_method=_METHOD.value)


def main(argv):
  if len(argv) != 2:
    raise _usage("give exactly one VIDEO: kd-mh detect VIDEO --workdir=EVAL --out=DIR"
                 + (f" (got {' '.join(argv[1:])})" if len(argv) > 2 else ""))
  for flag in (_WORKDIR, _OUT):
    if not flag.value:
      raise _usage(f"--{flag.name} is required")
  config = detect_config()
  try:
    config.validate()
  except detect.DetectError as e:
    raise _usage(str(e)) from None
  try:
    report = detect.run(argv[1], _WORKDIR.value, _OUT.value, config=config, progress=_progress)
  except ValueError as e:  # DetectError, or threshold.json / the student run named by the message
    logging.debug("kd-mh detect failed", exc_info=True)
    print(f"kd-mh detect: error: {e}", file=sys.stderr)
    return 2
  print(f"kd-mh detect: {report['verdict']} ({report['reason']})")
  return 0
