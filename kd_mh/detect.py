"""One video -> face and voice emotions over time, their divergence, flagged segments, a verdict.

  threshold = evaluate.load_threshold("runs/eval")      # what `kd-mh evaluate` chose
  report = detect.detect_video("clip.mp4", threshold)   # the dict written as report.json
  detect.run("clip.mp4", "runs/eval", "out/clip")       # both, plus report.html and PNGs

Steps:
1. The per-clip pipeline of the corpus build (`data_prep.build.process_clip`): decoding, face
   tracking, speaker isolation, the speaker's aligned face crops at 10 fps with their timestamps
   and mask, and the log-mel (10 ms hop). Crop size and mel bins follow the student run's inputs.
2. Windows on the grid of threshold.json (`window_s`, `hop_s`; `divergence.sliding_windows`).
3. The teacher (the frozen teacher of the student run that threshold.json names) on the
   speaker's face frames of each window as one masked sequence: the backbone runs once per frame
   and `Teacher.pool` pools each window's frames, which gives exactly what the Teacher gives on
   that window alone. The student on each window's log-mel slice as one utterance.
4. Temperature-calibrated probabilities (`softmax(logits / T)` with the temperatures of
   threshold.json; a student with a corpus's own classes is summed onto the seven) and the
   divergence named there, per window.

A window is *usable* when the speaker's face is in at least `min_face_fraction` of its sampled
frames and it has speech in at least `min_speech_fraction` of its 10 ms log-mel frames.

Speech test. A log-mel frame counts as speech when its energy (the summed mel power, in dB) is
  * above an absolute floor: the mean frame energy of white noise at `speech_floor_dbfs` (default
    -45 dBFS, measured through the same log-mel, so the floor means the same for any mel
    settings); digital silence and a quiet room stay below it, and
  * within `speech_range_db` (default 25 dB) of the clip's loud frames (the 95th percentile), so
    pauses and breaths between words, and background noise in a loud recording, are left out.
On the six CREMA-D clips this marks 35-52% of frames (the spoken part of each 2-2.5 s clip). It
is an energy test, not a voice activity detector: loud non-speech sound (music, machinery) counts
as speech.

Verdict: "insufficient evidence" (with the reason) when the clip cannot be read as a talking face
(no video, no audio, no face: the build's reason), is shorter than `min_duration_s`, or has fewer
than `min_usable_windows` usable windows or usable windows making up less than
`min_usable_fraction` of all; otherwise "incongruent affect flagged" when at least `persistence`
of the usable windows are flagged (divergence >= threshold, as in the ROC), else "no persistent
incongruence".
Consecutive flagged windows merge into segments.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from data_prep import build
from data_prep import faces
from data_prep import features
from data_prep import media
from data_prep.corpora.base import ClipSpec
from kd_mh import calibration
from kd_mh import divergence
from kd_mh import emotions
from kd_mh import train
from kd_mh.models import teacher as teacher_lib

INSUFFICIENT = "insufficient evidence"
FLAGGED = "incongruent affect flagged"
NOT_FLAGGED = "no persistent incongruence"
VERDICTS = (FLAGGED, NOT_FLAGGED, INSUFFICIENT)

DISCLAIMER = ("kd_mh is a research tool, not a diagnostic device. A flagged segment means only "
              "that a face model and a speech model disagree about the emotion shown; it says "
              "nothing about a person's health. Any clinical reading needs clinical judgement and "
              "validation on the population at hand.")

_FRAME_CHUNK = 64  # face frames per backbone call: one compiled shape for any video


class DetectError(ValueError):
  """A detection that cannot run: an unreadable file, a bad option or model; names the cause."""


@dataclasses.dataclass(frozen=True)
class DetectConfig:
  """The detector's evidence rules (the window grid and threshold come from threshold.json)."""
  min_face_fraction: float = 0.5  # share of a window's sampled frames that show the speaker
  min_speech_fraction: float = 0.2  # share of a window's log-mel frames that are speech
  speech_floor_dbfs: float = -45.0  # speech is louder than white noise at this RMS level
  speech_range_db: float = 25.0  # ... and within this of the clip's loud frames
  loud_percentile: float = 95.0  # the clip's "loud frames" level
  min_usable_windows: int = 1
  min_usable_fraction: float = 0.25  # usable windows / all windows
  min_duration_s: float = 1.0
  persistence: float = 0.5  # flagged / usable windows for the "flagged" verdict
  max_duration_s: float = 600.0  # longer videos are read up to this point
  speaker_method: str = "av"  # data_prep speaker isolation: av | cluster
  batch_size: int = 16  # windows per forward pass

  def validate(self) -> None:
    """Raises DetectError naming the first bad field."""
    fractions = dict(min_face_fraction=self.min_face_fraction,
                     min_speech_fraction=self.min_speech_fraction,
                     min_usable_fraction=self.min_usable_fraction, persistence=self.persistence)
    for name, value in fractions.items():
      if not 0.0 <= value <= 1.0:
        raise DetectError(f"DetectConfig.{name} must be in [0, 1], got {value}")
    if not 0.0 < self.loud_percentile <= 100.0:
      raise DetectError(f"DetectConfig.loud_percentile must be in (0, 100], got "
                        f"{self.loud_percentile}")
    for name in ("speech_range_db", "min_duration_s"):
      if getattr(self, name) < 0:
        raise DetectError(f"DetectConfig.{name} must be >= 0, got {getattr(self, name)}")
    for name in ("max_duration_s", "batch_size"):
      if getattr(self, name) <= 0:
        raise DetectError(f"DetectConfig.{name} must be > 0, got {getattr(self, name)}")
    if self.min_usable_windows < 1:
      raise DetectError(f"DetectConfig.min_usable_windows must be >= 1, got "
                        f"{self.min_usable_windows}")
    if not math.isfinite(self.speech_floor_dbfs):
      raise DetectError("DetectConfig.speech_floor_dbfs must be finite")


# ----------------------------------------------------------------------------------------------
# Pure pieces: speech frames, window evidence, segments, verdict.


def frame_energy_db(logmel: np.ndarray) -> np.ndarray:
  """[F, M] natural-log mel energies -> [F] frame energy, 10 log10 of the summed mel power."""
  return special.logsumexp(np.asarray(logmel, np.float64), axis=-1) * (10.0 / math.log(10.0))


@functools.lru_cache(maxsize=16)
def noise_energy_db(level_dbfs: float, logmel_config: features.LogMelConfig) -> float:
  """Mean `frame_energy_db` of one second of white noise whose RMS is `level_dbfs` (full scale 1).

  Deterministic (a fixed seed); the mean is over frames of summed power, so it is stable to
  about 0.1 dB.
  """
  noise = np.random.default_rng(0).standard_normal(logmel_config.sample_rate)
  noise *= 10.0 ** (level_dbfs / 20.0)
  power = np.exp(features.log_mel(noise.astype(np.float32), logmel_config)).sum(axis=-1)
  return float(10.0 * np.log10(power.mean()))


def speech_frames(energy_db: np.ndarray, mask: np.ndarray, floor_db: float, range_db: float,
                  loud_percentile: float = 95.0) -> np.ndarray:
  """[F] bool: valid frames louder than `floor_db` and within `range_db` of the loud frames.

  Args:
    energy_db: [F] frame energies (`frame_energy_db`).
    mask: [F] bool, the frames that exist.
    floor_db: absolute floor on the same scale (`noise_energy_db`).
    range_db: how far below the clip's `loud_percentile` percentile a speech frame may be.
    loud_percentile: the percentile of the valid frames' energies that stands for "loud".
  """
  energy_db = np.asarray(energy_db, np.float64)
  mask = np.asarray(mask, bool)
  if energy_db.shape != mask.shape or energy_db.ndim != 1:
    raise ValueError(f"energy_db and mask must both be [F], got {energy_db.shape} and "
                     f"{mask.shape}")
  if not mask.any():
    return np.zeros_like(mask)
  loud = np.percentile(energy_db[mask], loud_percentile)
  return mask & (energy_db >= max(floor_db, loud - range_db))


def flagged_segments(windows: np.ndarray, flagged: np.ndarray, divergences: np.ndarray,
                     end_s: Optional[float] = None) -> list[dict[str, Any]]:
  """Runs of consecutive flagged windows that overlap or touch, merged into time segments.

  Args:
    windows: [W, 2] (start, end) seconds in time order.
    flagged: [W] bool.
    divergences: [W] per-window divergence (finite where flagged).
    end_s: clip end; segments are cut there (the last window may run past it).

  Returns:
    [{"start_s", "end_s", "n_windows", "mean_divergence", "max_divergence"}], in time order.
  """
  windows = np.asarray(windows, np.float64)
  flagged = np.asarray(flagged, bool)
  divergences = np.asarray(divergences, np.float64)
  runs: list[list[int]] = []
  for w in np.flatnonzero(flagged):
    if runs and runs[-1][-1] == w - 1 and windows[w, 0] <= windows[w - 1, 1]:
      runs[-1].append(w)
    else:
      runs.append([w])
  segments = []
  for run in runs:
    end = windows[run[-1], 1] if end_s is None else min(windows[run[-1], 1], end_s)
    values = divergences[run]
    segments.append({"start_s": float(windows[run[0], 0]), "end_s": float(end),
                     "n_windows": len(run), "mean_divergence": float(values.mean()),
                     "max_divergence": float(values.max())})
  return segments


def decide(face_ok: np.ndarray, speech_ok: np.ndarray, flagged: np.ndarray, duration_s: float,
           config: DetectConfig) -> tuple[str, str, Optional[float]]:
  """(verdict, reason, flagged_fraction) from per-window evidence.

  Args:
    face_ok: [W] windows that show the speaker's face often enough.
    speech_ok: [W] windows with enough speech.
    flagged: [W] usable windows whose divergence exceeds the threshold.
    duration_s: the clip's length.
    config: the evidence rules.

  Returns:
    flagged_fraction is flagged / usable windows, None without usable windows.
  """
  face_ok, speech_ok, flagged = (np.asarray(a, bool) for a in (face_ok, speech_ok, flagged))
  usable = face_ok & speech_ok
  n, n_usable = len(usable), int(usable.sum())
  fraction = float(flagged[usable].mean()) if n_usable else None
  if duration_s < config.min_duration_s:
    return INSUFFICIENT, (f"too short: {duration_s:.2f} s of video, less than the "
                          f"{config.min_duration_s:g} s needed"), fraction
  needed = max(config.min_usable_windows, math.ceil(config.min_usable_fraction * n - 1e-9))
  if n_usable < needed:
    if not speech_ok.any():
      reason = (f"no speech: none of the {n} windows has speech in at least "
                f"{config.min_speech_fraction:.0%} of its frames (frames louder than white noise "
                f"at {config.speech_floor_dbfs:g} dBFS and within {config.speech_range_db:g} dB "
                "of the clip's loud frames)")
    elif not face_ok.any():
      reason = (f"no usable speaker face: none of the {n} windows shows the speaker's face in at "
                f"least {config.min_face_fraction:.0%} of its sampled frames")
    else:
      reason = (f"too little evidence: {n_usable} of {n} windows have both the speaker's face "
                f"({int(face_ok.sum())} windows) and speech ({int(speech_ok.sum())} windows); "
                f"{needed} needed")
    return INSUFFICIENT, reason, fraction
  n_flagged = int(flagged[usable].sum())
  detail = (f"{n_flagged} of {n_usable} usable windows ({fraction:.0%}) exceed the divergence "
            f"threshold; the verdict needs {config.persistence:.0%}")
  return (FLAGGED if fraction >= config.persistence else NOT_FLAGGED), detail, fraction


# ----------------------------------------------------------------------------------------------
# Models.


@dataclasses.dataclass(frozen=True)
class Models:
  """The student run that threshold.json names, with its frozen teacher, ready for windows."""
  workdir: str
  step: int
  teacher: nn.Module
  teacher_variables: Any
  student: nn.Module
  student_variables: Any
  class_map: Optional[tuple[int, ...]]  # a student with its own classes: their FER2013 class
  face_shape: tuple[int, int, int]
  n_mels: int


def load_models(threshold: Mapping[str, Any]) -> Models:
  """Restores threshold["student_workdir"] at threshold["student_step"] with its teacher."""
  workdir, step = str(threshold["student_workdir"]), int(threshold["student_step"])
  try:
    trained = train.load_trained(workdir, step=step)
  except (ValueError, FileNotFoundError) as e:
    raise DetectError(f"student run {workdir} (step {step}): {e}") from None
  if trained.config.mode != "student":
    raise DetectError(f"{workdir} is a {trained.config.mode!r} run; detection needs a distilled "
                      "student run (mode 'student'), which carries its teacher")
  classes = train.label_classes(trained.config)
  return Models(
      workdir=workdir, step=trained.step, teacher=trained.teacher,
      teacher_variables=trained.teacher_variables, student=trained.model,
      student_variables=trained.variables,
      class_map=None if classes is None else emotions.fold_onto_fer(classes),
      face_shape=tuple(int(v) for v in trained.config.inputs.face_shape),
      n_mels=int(trained.config.inputs.n_mels))


def _backbone(module: teacher_lib.Teacher, frames: jax.Array) -> dict[str, jax.Array]:
  return module.backbone(frames, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _frame_outputs(teacher: nn.Module, variables: Any, frames: jax.Array) -> dict[str, jax.Array]:
  return teacher.apply(variables, frames, method=_backbone)


@functools.partial(jax.jit, static_argnums=0)
def _pooled_logits(teacher: nn.Module, variables: Any, frame_logits: jax.Array,
                   frame_embedding: jax.Array, mask: jax.Array) -> jax.Array:
  return teacher.apply(variables, frame_logits, frame_embedding, mask,
                       method=teacher_lib.Teacher.pool)["logits"]


@functools.partial(jax.jit, static_argnums=0)
def _student_logits(student: nn.Module, variables: Any, logmel: jax.Array,
                    mask: jax.Array) -> jax.Array:
  return student.apply(variables, logmel, mask, train=False)["logits"]


def _in_batches(fn: Callable[[np.ndarray], Any], n: int, batch_size: int) -> list[Any]:
  """fn(indices) over 0..n-1 in fixed-size batches (the last one filled with repeats of n-1,
  whose outputs are dropped), so every call has one shape and compiles once."""
  outputs = []
  for start in range(0, n, batch_size):
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    out = jax.device_get(fn(idx))
    keep = min(batch_size, n - start)
    outputs.append(jax.tree.map(lambda x, k=keep: np.asarray(x)[:k], out))
  return outputs


def teacher_window_logits(models: Models, crops: np.ndarray, members: Sequence[np.ndarray],
                          length: int, batch_size: int) -> np.ndarray:
  """[W, C] teacher logits of each window's face frames (`members[w]`: indices into `crops`,
  the speaker's face crops [T, H, W, C]).

  Every window needs 1..`length` frames. The backbone runs once per frame; `Teacher.pool` pools
  each window's frames as one masked sequence padded to `length`.
  """
  if not members:
    return np.zeros((0, models.teacher.num_classes), np.float32)
  if any(not 0 < len(m) <= length for m in members):
    raise ValueError(f"every window must hold 1..{length} frames")
  used = np.unique(np.concatenate(members))
  chunks = _in_batches(lambda idx: _frame_outputs(models.teacher, models.teacher_variables,
                                                  jnp.asarray(crops[used[idx]])),
                       len(used), _FRAME_CHUNK)
  frame_logits = np.concatenate([c["logits"] for c in chunks])
  frame_embedding = np.concatenate([c["embedding"] for c in chunks])
  position = np.searchsorted(used, np.concatenate(members))
  rows = np.zeros((len(members), length), np.int64)
  mask = np.zeros((len(members), length), bool)
  offset = 0
  for w, m in enumerate(members):
    rows[w, :len(m)] = position[offset:offset + len(m)]
    mask[w, :len(m)] = True
    offset += len(m)
  return np.concatenate(_in_batches(
      lambda idx: _pooled_logits(models.teacher, models.teacher_variables,
                                 jnp.asarray(frame_logits[rows[idx]]),
                                 jnp.asarray(frame_embedding[rows[idx]]), jnp.asarray(mask[idx])),
      len(members), batch_size))


def student_window_logits(models: Models, logmel: np.ndarray, spans: np.ndarray, length: int,
                          batch_size: int) -> np.ndarray:
  """[W, K] student logits of each window's log-mel frames `logmel[lo:hi]` (`spans` [W, 2]),
  each an utterance padded to `length` frames."""
  spans = np.asarray(spans, np.int64).reshape(-1, 2)
  if not len(spans):
    return np.zeros((0, models.student.num_classes), np.float32)
  if np.any(spans[:, 1] - spans[:, 0] > length) or np.any(spans[:, 1] <= spans[:, 0]):
    raise ValueError(f"every span must hold 1..{length} frames")

  def batch(idx: np.ndarray) -> jax.Array:
    x = np.zeros((len(idx), length, logmel.shape[1]), np.float32)
    mask = np.zeros((len(idx), length), bool)
    for row, w in enumerate(idx):
      lo, hi = spans[w]
      x[row, :hi - lo] = logmel[lo:hi]
      mask[row, :hi - lo] = True
    return _student_logits(models.student, models.student_variables, jnp.asarray(x),
                           jnp.asarray(mask))
  return np.concatenate(_in_batches(batch, len(spans), batch_size))


def calibrated_probs(teacher_logits: np.ndarray, student_logits: np.ndarray,
                     threshold: Mapping[str, Any],
                     class_map: Optional[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """(face, voice) probabilities over the seven emotions, softmax(logits / T) with the
  temperatures of threshold.json; a student's own classes are summed onto the seven."""
  face = calibration.apply_temperature(teacher_logits, float(threshold["teacher_temperature"]))
  voice = calibration.apply_temperature(student_logits, float(threshold["student_temperature"]))
  if class_map is not None:
    voice = voice @ emotions.fold_matrix(class_map)  # [K] -> the seven, summed
  return face, voice


# ----------------------------------------------------------------------------------------------
# The detector.


def prep_config(models: Models, config: DetectConfig) -> build.PrepConfig:
  """The corpus build's per-clip settings, with the crop and mel sizes the models were built for."""
  size, _, channels = models.face_shape
  return build.PrepConfig(
      max_duration_s=config.max_duration_s, speaker_method=config.speaker_method,
      face=dataclasses.replace(faces.FaceConfig(), crop_size=size, crop_channels=channels),
      logmel=features.LogMelConfig(n_mels=models.n_mels))


def _frames_per_window(window_s: float, rate: float) -> int:
  """Samples a [start, start + window_s) window can hold at `rate` per second (+1 for jitter)."""
  return int(math.ceil(window_s * rate - 1e-9)) + 1


def _as_list(values: np.ndarray) -> list[float]:
  return [float(v) for v in values]


def detect_video(video: str | os.PathLike, threshold: Mapping[str, Any],
                 models: Optional[Models] = None, config: DetectConfig = DetectConfig(),
                 progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
  """The report (report.json's content) of one video against threshold.json's content.

  Args:
    video: a media file with the speaker's face and voice.
    threshold: the content of threshold.json (`kd_mh.evaluate.load_threshold`).
    models: the models it names, when already loaded (`load_models`); loaded otherwise.
    config: the evidence rules.
    progress: called with a line per step.

  Raises:
    DetectError: the file is not readable media, or a bad option or model.
  """
  say = progress or (lambda line: None)
  config.validate()
  video = os.path.abspath(os.fspath(video))
  try:
    info = media.probe(video)
  except media.MediaError as e:
    raise DetectError(str(e)) from None
  if models is None:
    say(f"loading the student run {threshold['student_workdir']} and its teacher")
    models = load_models(threshold)
  elif (models.workdir, models.step) != (str(threshold["student_workdir"]),
                                         int(threshold["student_step"])):
    raise DetectError(f"the loaded models are {models.workdir} at step {models.step}; "
                      f"threshold.json names {threshold['student_workdir']} at step "
                      f"{threshold['student_step']}")
  window_s, hop_s = float(threshold["window_s"]), float(threshold["hop_s"])
  name, cut = str(threshold["divergence"]), float(threshold["threshold"])
  prep = prep_config(models, config)
  report: dict[str, Any] = {
      "video": video, "duration_s": float(min(info.duration_s, config.max_duration_s)),
      "verdict": INSUFFICIENT, "reason": "", "flagged_fraction": None, "threshold": cut,
      "divergence": name, "rule": threshold.get("rule"), "window_s": window_s, "hop_s": hop_s,
      "windows": [], "segments": [], "emotions": list(emotions.EMOTIONS),
      "evidence": {}, "parameters": dataclasses.asdict(config),
      "models": {"student_workdir": models.workdir, "student_step": models.step,
                 "teacher_temperature": float(threshold["teacher_temperature"]),
                 "student_temperature": float(threshold["student_temperature"])},
      "disclaimer": DISCLAIMER,
  }
  if not info.has_video:
    report["reason"] = "no video stream: nothing shows the speaker's face"
  elif not info.has_audio:
    report["reason"] = "no audio stream: nothing carries the speaker's voice"
  if report["reason"]:
    say(f"{INSUFFICIENT}: {report['reason']}")
    return report

  say(f"decoding, face tracking and speaker isolation ({config.speaker_method}) on {video}")
  result = build.process_clip(ClipSpec(clip_id="detect", corpus="detect", path=video), prep)
  if result.example is None:
    report["reason"] = result.manifest["reason"]
    say(f"{INSUFFICIENT}: {report['reason']}")
    return report
  example = result.example
  duration = float(example["duration_s"])
  report["duration_s"] = duration

  # Face evidence: the speaker's sampled frames in each window.
  face_times = np.asarray(example["face_timestamps"], np.float64)
  face_mask = np.asarray(example["face_mask"], bool)
  windows = divergence.sliding_windows(face_times, window_s, hop_s, start=0.0, end=duration)
  face_fraction, _ = divergence.window_means(face_mask.astype(np.float64), face_times, None,
                                             windows)
  members = [np.flatnonzero(face_mask & (face_times >= s) & (face_times < e)) for s, e in windows]
  has_face = np.array([len(m) > 0 for m in members])
  face_ok = has_face & (np.nan_to_num(face_fraction) >= config.min_face_fraction)

  # Speech evidence: the loud-enough 10 ms log-mel frames in each window.
  logmel = np.asarray(example["logmel"], np.float32)
  logmel_mask = np.asarray(example["logmel_mask"], bool)
  mel_hop_s = prep.logmel.hop_ms / 1000.0
  mel_times = np.arange(len(logmel)) * mel_hop_s  # frame k is centred at k hops
  floor_db = noise_energy_db(config.speech_floor_dbfs, prep.logmel)
  speech = speech_frames(frame_energy_db(logmel), logmel_mask, floor_db, config.speech_range_db,
                         config.loud_percentile)
  speech_fraction, _ = divergence.window_means(speech.astype(np.float64), mel_times, logmel_mask,
                                               windows)
  speech_fraction = np.nan_to_num(speech_fraction)
  has_voice = speech_fraction > 0
  speech_ok = has_voice & (speech_fraction >= config.min_speech_fraction)
  spans = np.stack([np.searchsorted(mel_times, windows[:, 0]),
                    np.searchsorted(mel_times, windows[:, 1])], axis=-1)

  say(f"teacher on {int(has_face.sum())} and student on {int(has_voice.sum())} of "
      f"{len(windows)} windows ({window_s:g} s, every {hop_s:g} s)")
  teacher_logits = teacher_window_logits(
      models, np.asarray(example["faces"]), [m for m, f in zip(members, has_face) if f],
      _frames_per_window(window_s, float(example["fps"])), config.batch_size)
  student_logits = student_window_logits(
      models, logmel, spans[has_voice], _frames_per_window(window_s, 1.0 / mel_hop_s),
      config.batch_size)
  face_probs, voice_probs = calibrated_probs(teacher_logits, student_logits, threshold,
                                             models.class_map)
  face_all = np.full((len(windows), emotions.NUM_CLASSES), np.nan)
  voice_all = np.full((len(windows), emotions.NUM_CLASSES), np.nan)
  face_all[has_face], voice_all[has_voice] = face_probs, voice_probs
  both = has_face & has_voice
  values = np.full(len(windows), np.nan)
  if both.any():
    values[both] = divergence.divergence(name, face_all[both], voice_all[both])
  usable = face_ok & speech_ok
  flagged = usable & (np.nan_to_num(values, nan=-np.inf) >= cut)

  verdict, reason, fraction = decide(face_ok, speech_ok, flagged, duration, config)
  report.update(verdict=verdict, reason=reason, flagged_fraction=fraction)
  report["windows"] = [
      {"start_s": float(s), "end_s": float(e),
       "face_probs": _as_list(face_all[w]) if has_face[w] else None,
       "voice_probs": _as_list(voice_all[w]) if has_voice[w] else None,
       "divergence": float(values[w]) if both[w] else None,
       "flagged": bool(flagged[w]), "usable": bool(usable[w]),
       "face_fraction": float(np.nan_to_num(face_fraction[w])),
       "speech_fraction": float(speech_fraction[w])}
      for w, (s, e) in enumerate(windows)]
  report["segments"] = flagged_segments(windows, flagged, values, end_s=duration)
  report["evidence"] = {
      "n_windows": len(windows), "n_usable": int(usable.sum()),
      "n_face_windows": int(face_ok.sum()), "n_speech_windows": int(speech_ok.sum()),
      "n_flagged": int(flagged.sum()), "sampled_frames": int(len(face_mask)),
      "speaker_frames": int(face_mask.sum()), "speech_frames": int(speech.sum()),
      "logmel_frames": int(len(logmel)), "speech_floor_db": floor_db,
      "speaker_method": example["speaker_method"],
      "speaker_coverage": float(example["speaker_coverage"]),
      "face_tracks": int(example["n_tracks"])}
  say(f"{verdict}: {reason}")
  return report


def run(video: str | os.PathLike, eval_workdir: str | os.PathLike, out_dir: str | os.PathLike,
        config: DetectConfig = DetectConfig(), models: Optional[Models] = None,
        progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
  """`kd-mh detect`: the report of `video` against EVAL/threshold.json, written to `out_dir`
  (report.json, report.html and the plots). Returns the report."""
  from kd_mh import evaluate  # pylint: disable=import-outside-toplevel  (its own heavy imports)
  from kd_mh import report as report_lib  # pylint: disable=import-outside-toplevel  (matplotlib)
  threshold = evaluate.load_threshold(os.fspath(eval_workdir))
  report = detect_video(video, threshold, models=models, config=config, progress=progress)
  report["eval_workdir"] = os.path.abspath(os.fspath(eval_workdir))
  paths = report_lib.write(report, out_dir)
  (progress or (lambda line: None))(f"wrote {', '.join(str(p) for p in paths.values())}")
  return report
