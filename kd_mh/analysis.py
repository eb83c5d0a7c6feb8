"""Per-frame face emotion before and after speaker isolation: timelines, fluctuation, co-occurrence.

The original study ran a FER2013 model on every face of every sampled frame, so bystanders and
stray detections entered its per-frame emotion sequence, and then isolated the speaker by
clustering face encodings. This module reproduces its two analyses with kd_mh's own parts:

* **before** (all faces): every face the tracker (`data_prep.faces.track_faces`) finds in a sampled
  frame is one *event*, classified on its own from the same aligned crop the corpus build makes
  (`faces.align_crop`, 64x64 grayscale). Two views of the events are kept: the per-face event
  sequence, ordered by frame and then by track id (what the study's per-frame sequence was), and a
  per-frame *majority* view (`frame_majority`: the label most faces of the frame get; ties go to
  the larger summed probability, then to the earlier class in `EMOTIONS`), whose probabilities are
  the mean over the frame's faces.
* **after** (speaker): only the speaker's track per frame (`data_prep.speaker.choose_speaker`,
  the same choice and crops the corpus build uses).

The teacher classifies each face as a one-frame clip (T=1): the FER2013 mini-Xception by default
(`kd_mh.models.pretrained`), or the face model of a teacher or student run.

Pure functions (NumPy) hold the measures:
* `timeline`: per-frame probabilities -> labels and expected valence/arousal
  (`divergence.valence_arousal`); frames without a face are UNLABELLED / NaN.
* `fluctuation`: label switches (between consecutive labelled entries; a frame without a face
  is skipped, not a switch) per second of clip, mean per-entry entropy of the probabilities, and
  entropy of the label histogram, both in bits.
* `cooccurrence`: for the clips of each main emotion (the clip's label), the percentage of their
  labelled frames (pooled over the clips) predicted as each of the seven emotions, *including*
  the main one, so each row sums to 100; the six other emotions are ranked by that percentage
  (1 = most frequent), equal counts sharing the best rank (competition ranking: 1, 2, 2, 4), and
  the main emotion itself is not ranked (rank 0).

`analyze` runs a list of clips (`ClipSpec`s) end to end and writes OUT/timelines/<clip>.png,
OUT/fluctuation.csv, OUT/cooccurrence.csv (speaker), OUT/cooccurrence_before.csv (all faces) and
OUT/summary.json.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import special
import tqdm

from data_prep import build
from data_prep import faces
from data_prep import media
from data_prep import speaker
from data_prep.corpora.base import ClipSpec
from kd_mh import divergence
from kd_mh import train
from kd_mh.emotions import EMOTIONS, NUM_CLASSES, UNLABELLED
from kd_mh.models import pretrained
from kd_mh.models import teacher as teacher_lib

# Views of a clip's face emotions, in the order tables and plots show them.
BEFORE_FACES = "before_faces"  # every face of every frame, one event each
BEFORE_MAJORITY = "before_majority"  # per frame, the majority over its faces
AFTER_SPEAKER = "after_speaker"  # the speaker's face only
VIEWS = (BEFORE_FACES, BEFORE_MAJORITY, AFTER_SPEAKER)
FER2013 = "fer2013"


# ----------------------------------------------------------------------------------------------
# Pure measures.


@dataclasses.dataclass(frozen=True)
class Timeline:
  """Per-entry emotion (entries are frames, or face events); NaN / UNLABELLED where no face."""
  timestamps: np.ndarray  # [N] seconds on the video clock
  labels: np.ndarray  # [N] int, class index or UNLABELLED
  probs: np.ndarray  # [N, K] float64
  valence_arousal: np.ndarray  # [N, 2] float64, expected (valence, arousal) under probs


def timeline(timestamps: np.ndarray, probs: np.ndarray,
             mask: Optional[np.ndarray] = None) -> Timeline:
  """Labels (argmax) and valence/arousal of per-entry probabilities [N, K]; `mask` [N] marks the
  entries with a face (None: all); the others get UNLABELLED and NaN."""
  timestamps = np.asarray(timestamps, np.float64)
  probs = np.asarray(probs, np.float64)
  n = len(timestamps)
  if timestamps.shape != (n,) or probs.shape != (n, NUM_CLASSES):
    raise ValueError(f"timeline: timestamps [N] and probs [N, {NUM_CLASSES}] expected, got "
                     f"{timestamps.shape} and {probs.shape}")
  mask = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
  if mask.shape != (n,):
    raise ValueError(f"timeline: mask must be [N]={n}, got {mask.shape}")
  labels = np.full(n, UNLABELLED, np.int64)
  clean = np.full((n, NUM_CLASSES), np.nan)
  va = np.full((n, 2), np.nan)
  if mask.any():
    clean[mask] = divergence.as_distribution(probs[mask], "probs")
    labels[mask] = np.argmax(clean[mask], axis=-1)
    va[mask] = divergence.valence_arousal(clean[mask])
  return Timeline(timestamps, labels, clean, va)


def entropy_bits(probs: np.ndarray) -> np.ndarray:
  """Shannon entropy in bits over the last axis (0 log 0 = 0)."""
  return special.entr(np.asarray(probs, np.float64)).sum(-1) / math.log(2.0)


def label_switches(labels: np.ndarray) -> int:
  """Changes of label between consecutive labelled entries (UNLABELLED entries are skipped)."""
  labels = np.asarray(labels)
  labelled = labels[labels != UNLABELLED]
  return int(np.count_nonzero(labelled[1:] != labelled[:-1]))


def label_entropy_bits(labels: np.ndarray) -> float:
  """Entropy in bits of the histogram of the labelled entries; NaN without any."""
  labels = np.asarray(labels)
  counts = np.bincount(labels[labels != UNLABELLED], minlength=NUM_CLASSES)
  if counts.sum() == 0:
    return math.nan
  return float(entropy_bits(counts / counts.sum()))


@dataclasses.dataclass(frozen=True)
class Fluctuation:
  """How much a label sequence moves; entropies are NaN when no entry is labelled."""
  entries: int  # labelled entries
  switches: int
  switches_per_s: float
  label_entropy_bits: float  # of the label histogram
  frame_entropy_bits: float  # mean over the labelled entries of their probabilities' entropy


def fluctuation(labels: np.ndarray, duration_s: float,
                probs: Optional[np.ndarray] = None) -> Fluctuation:
  """Switches per second of `duration_s`, label-histogram entropy, mean per-entry entropy.

  Args:
    labels: [N] class indices or UNLABELLED.
    duration_s: the span the sequence covers (the clip), > 0.
    probs: [N, K] probabilities of the entries (rows of unlabelled entries are ignored); None
      leaves `frame_entropy_bits` NaN.
  """
  if not duration_s > 0:
    raise ValueError(f"fluctuation: duration_s must be > 0, got {duration_s}")
  labels = np.asarray(labels)
  labelled = labels != UNLABELLED
  switches = label_switches(labels)
  mean_entropy = math.nan
  if probs is not None and labelled.any():
    mean_entropy = float(entropy_bits(np.asarray(probs, np.float64)[labelled]).mean())
  return Fluctuation(entries=int(labelled.sum()), switches=switches,
                     switches_per_s=switches / duration_s,
                     label_entropy_bits=label_entropy_bits(labels),
                     frame_entropy_bits=mean_entropy)


def frame_majority(event_frames: np.ndarray, event_probs: np.ndarray,
                   n_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per frame, the majority label over its face events and their mean probabilities.

  A tie between labels goes to the larger summed probability of the tied labels, then to the
  earlier class in EMOTIONS.

  Returns:
    (labels [T] with UNLABELLED where a frame has no face, mean probs [T, K] with NaN rows there,
    faces per frame [T]).
  """
  event_frames = np.asarray(event_frames, np.int64)
  event_probs = np.asarray(event_probs, np.float64).reshape(-1, NUM_CLASSES)
  if event_frames.shape != (len(event_probs),):
    raise ValueError(f"frame_majority: {event_frames.shape} frames for {len(event_probs)} events")
  votes = np.zeros((n_frames, NUM_CLASSES))
  np.add.at(votes, (event_frames, np.argmax(event_probs, axis=-1)), 1)
  summed = np.zeros((n_frames, NUM_CLASSES))
  np.add.at(summed, event_frames, event_probs)
  count = votes.sum(-1)
  tied = votes == votes.max(-1, keepdims=True)
  labels = np.where(count > 0, np.argmax(np.where(tied, summed, -np.inf), axis=-1), UNLABELLED)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = summed / count[:, None]
  return labels.astype(np.int64), mean, count.astype(np.int64)


def speaker_frames(event_frames: np.ndarray, event_tracks: np.ndarray, event_probs: np.ndarray,
                   speaker_track: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The speaker's probabilities per frame: (probs [T, K], NaN rows without the speaker; mask [T]).

  `speaker_track` [T] is the speaker's track id per frame, or -1 (`SpeakerChoice.per_frame`).
  """
  speaker_track = np.asarray(speaker_track, np.int64)
  probs = np.full((len(speaker_track), NUM_CLASSES), np.nan)
  chosen = speaker_track[event_frames] == event_tracks
  probs[np.asarray(event_frames)[chosen]] = np.asarray(event_probs)[chosen]
  mask = speaker_track >= 0
  if np.isnan(probs[mask]).any():
    raise ValueError("speaker_frames: a frame's speaker track has no face event in that frame")
  return probs, mask


@dataclasses.dataclass(frozen=True)
class Cooccurrence:
  """One main emotion's row of the co-occurrence table."""
  main: int  # class index
  clips: int
  frames: int  # labelled frames (or face events) pooled over the clips
  percent: np.ndarray  # [K] percentage of those frames per predicted class; NaN when frames == 0
  rank: np.ndarray  # [K] rank of each other class (1 = most frequent); 0 for the main class


def competition_rank(counts: np.ndarray) -> np.ndarray:
  """1 + the number of strictly larger entries: equal counts share the best rank (1, 2, 2, 4)."""
  counts = np.asarray(counts)
  return 1 + (counts[None, :] > counts[:, None]).sum(axis=1)


def cooccurrence(clips: Iterable[tuple[int, np.ndarray]]) -> list[Cooccurrence]:
  """The study's table from (main emotion, per-frame labels) per clip; rows in EMOTIONS order.

  Clips whose main emotion is UNLABELLED are left out; UNLABELLED frames are not counted. Only
  main emotions with at least one clip get a row.
  """
  counts = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  n_clips = np.zeros(NUM_CLASSES, np.int64)
  for main, labels in clips:
    if main == UNLABELLED:
      continue
    if not 0 <= main < NUM_CLASSES:
      raise ValueError(f"cooccurrence: main emotion {main} is not a class index")
    labels = np.asarray(labels, np.int64)
    if np.any((labels < UNLABELLED) | (labels >= NUM_CLASSES)):
      raise ValueError(f"cooccurrence: labels must be class indices or {UNLABELLED}")
    n_clips[main] += 1
    counts[main] += np.bincount(labels[labels != UNLABELLED], minlength=NUM_CLASSES)
  rows = []
  for main in np.flatnonzero(n_clips):
    total = int(counts[main].sum())
    percent = (100.0 * counts[main] / total if total else np.full(NUM_CLASSES, np.nan))
    others = [k for k in range(NUM_CLASSES) if k != main]
    rank = np.zeros(NUM_CLASSES, np.int64)
    if total:
      rank[others] = competition_rank(counts[main, others])
    rows.append(Cooccurrence(main=int(main), clips=int(n_clips[main]), frames=total,
                             percent=percent, rank=rank))
  return rows


def cooccurrence_records(rows: Sequence[Cooccurrence]) -> list[dict[str, Any]]:
  """Flat CSV/JSON rows: main_emotion, clips, frames, then <emotion>_percent and <emotion>_rank
  (empty for the main emotion, which is not ranked)."""
  records = []
  for row in rows:
    record: dict[str, Any] = {"main_emotion": EMOTIONS[row.main], "clips": row.clips,
                              "frames": row.frames}
    for k, name in enumerate(EMOTIONS):
      record[f"{name}_percent"] = round(float(row.percent[k]), 2) if row.frames else None
      record[f"{name}_rank"] = "" if k == row.main or not row.frames else int(row.rank[k])
    records.append(record)
  return records


def format_cooccurrence(rows: Sequence[Cooccurrence], title: str) -> str:
  """A text table: per main emotion, each class's percentage and (rank); the main's own in []."""
  width = 12
  lines = [title, f"{'main':<9}{'clips':>6}{'frames':>8}  "
           + "".join(f"{name:>{width}}" for name in EMOTIONS)]
  for row in rows:
    cells = []
    for k in range(NUM_CLASSES):
      if not row.frames:
        cells.append("-")
      elif k == row.main:
        cells.append(f"[{row.percent[k]:.1f}]")
      else:
        cells.append(f"{row.percent[k]:.1f} ({row.rank[k]})")
    lines.append(f"{EMOTIONS[row.main]:<9}{row.clips:>6}{row.frames:>8}  "
                 + "".join(f"{c:>{width}}" for c in cells))
  return "\n".join(lines)


def write_csv(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
  """Rows of equal keys as a CSV with a header; NaN and None become empty cells."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  columns = list(records[0]) if records else []
  if any(list(r) != columns for r in records):
    raise ValueError(f"write_csv: {path}: every row must have the columns {columns}")

  def cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
      return ""
    return value

  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows([cell(r[c]) for c in columns] for r in records)


# ----------------------------------------------------------------------------------------------
# The teacher on single frames.


@dataclasses.dataclass(frozen=True)
class FrameTeacher:
  """A face model applied to one frame at a time."""
  module: teacher_lib.Teacher
  variables: Any
  source: str  # "fer2013", or the run's workdir and step
  face_shape: tuple[int, int, int]  # (size, size, channels) of its input crops


def load_frame_teacher(workdir: Optional[str] = None) -> FrameTeacher:
  """The FER2013 mini-Xception (None), or the face model of the teacher or student run `workdir`.

  Raises ValueError for a run without a face model (a supervised-only student) or a bad workdir,
  and pretrained.PretrainedUnavailableError when the FER2013 weights cannot be had.
  """
  if workdir is None:
    module = teacher_lib.Teacher()
    size = pretrained.INPUT_SIZE
    return FrameTeacher(module, pretrained.init_teacher_variables(module, jax.random.key(0)),
                        FER2013, (size, size, 1))
  trained = train.load_trained(workdir)
  if trained.config.mode == "teacher":
    module, variables = trained.model, trained.variables
  elif trained.teacher is not None:
    module, variables = trained.teacher, trained.teacher_variables
  else:
    raise ValueError(f"{workdir} is a {trained.config.mode!r} run: it has no face model")
  return FrameTeacher(module, variables, f"{workdir} (step {trained.step})",
                      tuple(int(v) for v in trained.config.inputs.face_shape))


@functools.partial(jax.jit, static_argnums=0)
def _frame_probs(module: nn.Module, variables: Any, crops: jax.Array) -> jax.Array:
  # One-frame clips: the pooled output is the frame's own.
  out = module.apply(variables, crops[:, None], jnp.ones((crops.shape[0], 1), bool), train=False)
  return jax.nn.softmax(out["frame_logits"][:, 0], axis=-1)


def predict_frames(teacher: FrameTeacher, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """Probabilities [N, K] (float64) of face crops [N, size, size, channels] uint8."""
  crops = np.asarray(crops)
  if crops.shape[1:] != teacher.face_shape:
    raise ValueError(f"predict_frames: crops {crops.shape[1:]} do not fit the teacher's input "
                     f"{teacher.face_shape}")
  out = []
  for start in range(0, len(crops), batch_size):
    batch = crops[start:start + batch_size]
    # Padded to one shape: compiled once.
    padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:],
                                             batch.dtype)])
    out.append(np.asarray(_frame_probs(teacher.module, teacher.variables, padded))[:len(batch)])
  return (np.concatenate(out) if out else np.zeros((0, NUM_CLASSES))).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# One clip.


@dataclasses.dataclass(frozen=True)
class ClipFaces:
  """Every face of every sampled frame of a clip, and the speaker's track per frame."""
  timestamps: np.ndarray  # [T] seconds
  duration_s: float
  event_frames: np.ndarray  # [E] sampled frame of each face event
  event_tracks: np.ndarray  # [E] its track id
  crops: np.ndarray  # [E, size, size, channels] uint8 aligned crops
  speaker_track: np.ndarray  # [T] the speaker's track id, or -1
  speaker_tracks: tuple[int, ...]  # the tracks isolation gave to the speaker
  speaker_method: str
  n_tracks: int


def clip_faces(path: str, config: build.PrepConfig = build.PrepConfig()) -> ClipFaces:
  """Decodes, tracks and isolates the speaker as the corpus build does (same config, same parts).

  Raises media.MediaError for a file without video or one that cannot be decoded.
  """
  info = media.probe(path)
  if not info.has_video:
    raise media.MediaError(path, "no video stream: nothing to analyse")
  tracking = faces.track_faces(media.iter_frames(path, config.fps, config.max_duration_s),
                               config.face)
  sample_rate = config.logmel.sample_rate
  audio = (media.load_audio(path, sample_rate, config.max_duration_s) if info.has_audio
           else None)
  choice = speaker.choose_speaker(tracking, audio, sample_rate, config.speaker_method)
  size, channels = config.face.crop_size, config.face.crop_channels
  # Ordered by frame, then track: the per-face event sequence.
  events = sorted(((frame, track.track_id, crop) for track in tracking.tracks
                   for frame, crop in zip(track.frame_indices, track.crops)),
                  key=lambda e: e[:2])
  timestamps = np.asarray(tracking.timestamps, np.float64)
  step = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 1.0 / config.fps
  return ClipFaces(
      timestamps=timestamps, duration_s=float(timestamps[-1] + step),
      event_frames=np.array([e[0] for e in events], np.int64),
      event_tracks=np.array([e[1] for e in events], np.int64),
      crops=(np.stack([e[2] for e in events]) if events
             else np.zeros((0, size, size, channels), np.uint8)),
      speaker_track=np.asarray(choice.per_frame, np.int64),
      speaker_tracks=tuple(choice.speaker_track_ids), speaker_method=choice.method,
      n_tracks=len(tracking.tracks))


@dataclasses.dataclass(frozen=True)
class ClipAnalysis:
  clip_id: str
  main: int  # the clip's label (main emotion) or UNLABELLED
  duration_s: float
  n_tracks: int
  speaker_method: str
  speaker_tracks: tuple[int, ...]  # the tracks isolation gave to the speaker
  faces_per_frame: np.ndarray  # [T]
  event_tracks: np.ndarray  # [E]
  timelines: dict[str, Timeline]  # per view; BEFORE_FACES has one entry per face event
  fluctuation: dict[str, Fluctuation]  # per view


def analyze_faces(clip_id: str, main: int, clip: ClipFaces, event_probs: np.ndarray
                  ) -> ClipAnalysis:
  """Timelines and fluctuation of every view from the teacher's per-event probabilities."""
  n_frames = len(clip.timestamps)
  majority, mean, per_frame = frame_majority(clip.event_frames, event_probs, n_frames)
  before = dataclasses.replace(timeline(clip.timestamps, np.nan_to_num(mean), per_frame > 0),
                               labels=majority)
  after_probs, after_mask = speaker_frames(clip.event_frames, clip.event_tracks, event_probs,
                                           clip.speaker_track)
  timelines = {
      BEFORE_FACES: timeline(clip.timestamps[clip.event_frames], event_probs),
      BEFORE_MAJORITY: before,
      AFTER_SPEAKER: timeline(clip.timestamps, np.nan_to_num(after_probs), after_mask),
  }
  return ClipAnalysis(
      clip_id=clip_id, main=main, duration_s=clip.duration_s, n_tracks=clip.n_tracks,
      speaker_method=clip.speaker_method, speaker_tracks=clip.speaker_tracks,
      faces_per_frame=per_frame, event_tracks=clip.event_tracks, timelines=timelines,
      fluctuation={view: fluctuation(t.labels, clip.duration_s, t.probs)
                   for view, t in timelines.items()})


def analyze_clip(spec: ClipSpec, teacher: FrameTeacher,
                 config: build.PrepConfig = build.PrepConfig(), batch_size: int = 64
                 ) -> ClipAnalysis:
  """One clip end to end (raises media.MediaError for an unusable file)."""
  clip = clip_faces(spec.path, config)
  return analyze_faces(spec.clip_id, spec.label, clip,
                       predict_frames(teacher, clip.crops, batch_size))


# ----------------------------------------------------------------------------------------------
# Outputs.


def fluctuation_records(analysis: ClipAnalysis) -> list[dict[str, Any]]:
  """fluctuation.csv rows of a clip: one per view."""
  rows = []
  for view in VIEWS:
    f = analysis.fluctuation[view]
    rows.append({
        "clip_id": analysis.clip_id,
        "main_emotion": EMOTIONS[analysis.main] if analysis.main != UNLABELLED else "",
        "view": view, "duration_s": round(analysis.duration_s, 3), "entries": f.entries,
        "switches": f.switches, "switches_per_s": round(f.switches_per_s, 4),
        "label_entropy_bits": round(f.label_entropy_bits, 4),
        "frame_entropy_bits": round(f.frame_entropy_bits, 4),
        "faces_per_frame_max": int(analysis.faces_per_frame.max(initial=0)),
        "n_tracks": analysis.n_tracks,
    })
  return rows


def plot_timeline(analysis: ClipAnalysis, path: str | os.PathLike) -> None:
  """Before vs after: label strips (every face; the speaker) and valence / arousal lines."""
  from matplotlib import figure  # pylint: disable=import-outside-toplevel  (plots only)

  fig = figure.Figure(figsize=(11, 8), layout="constrained")
  axes = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [2, 2, 1.3, 1.3]})
  events = analysis.timelines[BEFORE_FACES]
  majority = analysis.timelines[BEFORE_MAJORITY]
  after = analysis.timelines[AFTER_SPEAKER]
  flux = analysis.fluctuation
  for track in np.unique(analysis.event_tracks):
    mine = analysis.event_tracks == track
    role = " (speaker)" if track in analysis.speaker_tracks else ""
    axes[0].plot(events.timestamps[mine], events.labels[mine], "o", ms=4, alpha=0.7,
                 label=f"face track {track}{role}")
  axes[0].step(majority.timestamps, np.where(majority.labels >= 0, majority.labels, np.nan),
               where="mid", color="0.3", lw=1, label="frame majority")
  axes[0].set_title(f"before: every face ({flux[BEFORE_FACES].switches_per_s:.2f} switches/s "
                    f"per face event, {flux[BEFORE_MAJORITY].switches_per_s:.2f} by frame "
                    "majority)", fontsize=9)
  axes[1].step(after.timestamps, np.where(after.labels >= 0, after.labels, np.nan), where="mid",
               color="C3", lw=1.5)
  axes[1].plot(after.timestamps, np.where(after.labels >= 0, after.labels, np.nan), "o",
               color="C3", ms=4)
  axes[1].set_title(f"after: the speaker only ({flux[AFTER_SPEAKER].switches_per_s:.2f} "
                    f"switches/s, {analysis.speaker_method} isolation)", fontsize=9)
  for ax in axes[:2]:
    ax.set_yticks(range(NUM_CLASSES), EMOTIONS, fontsize=8)
    ax.set_ylim(-0.5, NUM_CLASSES - 0.5)
    ax.grid(axis="y", alpha=0.3)
  axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  for ax, k, name in ((axes[2], 0, "valence"), (axes[3], 1, "arousal")):
    # Wide and pale under the speaker's line: where they coincide, isolation changed nothing.
    ax.plot(majority.timestamps, majority.valence_arousal[:, k], color="0.6", lw=4, alpha=0.6,
            label="before (mean over faces)")
    ax.plot(after.timestamps, after.valence_arousal[:, k], color="C3", label="after (speaker)")
    ax.set_ylabel(name)
    ax.set_ylim(-1, 1)
    ax.axhline(0, color="0.8", lw=0.8)
  axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  axes[3].set_xlabel("time (s)")
  main = EMOTIONS[analysis.main] if analysis.main != UNLABELLED else "unlabelled"
  fig.suptitle(f"{analysis.clip_id} (main emotion: {main}): teacher emotion per frame")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=90)


def timeline_path(out_dir: str | os.PathLike, clip_id: str) -> pathlib.Path:
  """OUT/timelines/<clip_id>.png; clip ids with "/" (folder corpora) make subfolders."""
  parts = pathlib.PurePosixPath(clip_id).parts
  if not parts or parts[0] == "/" or ".." in parts:
    raise ValueError(f"clip id {clip_id!r} is not a safe relative name")
  return pathlib.Path(out_dir, "timelines", *parts[:-1], parts[-1] + ".png")


def _skip_reason(spec: ClipSpec) -> str:
  if spec.error or not spec.path:
    return spec.error or "no media file"
  if spec.kind != "media":
    return f"{spec.path}: a {spec.kind}, not a video"
  return ""


@dataclasses.dataclass(frozen=True)
class Run:
  """What `analyze` wrote: the summary.json content, each clip's analysis and the tables."""
  summary: dict[str, Any]
  analyses: list[ClipAnalysis]
  cooccurrence: dict[str, list[Cooccurrence]]  # AFTER_SPEAKER and BEFORE_FACES


def analyze(specs: Sequence[ClipSpec], out_dir: str | os.PathLike, teacher: FrameTeacher,
            config: build.PrepConfig = build.PrepConfig(), batch_size: int = 64,
            progress: bool = True) -> Run:
  """Analyses every clip and writes the outputs (see the module doc).

  A clip that cannot be analysed (no video, undecodable, a reader error) is skipped with its
  reason in the summary; the run goes on. Rerunning overwrites the outputs.
  """
  config.validate()
  face = config.face
  if (face.crop_size, face.crop_size, face.crop_channels) != teacher.face_shape:
    raise ValueError(f"crops of {face.crop_size}x{face.crop_size}x{face.crop_channels} do not fit "
                     f"the teacher's input {teacher.face_shape}")
  out = pathlib.Path(out_dir)
  started = time.time()
  analyses: list[ClipAnalysis] = []
  skipped: list[dict[str, str]] = []
  for spec in tqdm.tqdm(specs, desc="analyze", unit="clip", disable=not progress):
    reason = _skip_reason(spec)
    if not reason:
      try:
        analysis = analyze_clip(spec, teacher, config, batch_size)
      except media.MediaError as e:
        reason = str(e)
      except Exception as e:  # pylint: disable=broad-except
        # One broken file must not stop the run; it is reported like any skipped clip.
        logging.exception("clip %s (%s) failed", spec.clip_id, spec.path)
        reason = f"{spec.path}: unexpected {type(e).__name__}: {e}"
    if not reason:
      try:
        plot = timeline_path(out, spec.clip_id)
      except ValueError as e:  # a clip id that would leave the output directory
        reason = str(e)
    if reason:
      skipped.append({"clip_id": spec.clip_id, "reason": reason})
      continue
    plot_timeline(analysis, plot)
    analyses.append(analysis)

  write_csv(out / "fluctuation.csv", [r for a in analyses for r in fluctuation_records(a)])
  tables = {
      AFTER_SPEAKER: cooccurrence((a.main, a.timelines[AFTER_SPEAKER].labels) for a in analyses),
      BEFORE_FACES: cooccurrence((a.main, a.timelines[BEFORE_FACES].labels) for a in analyses),
  }
  write_csv(out / "cooccurrence.csv", cooccurrence_records(tables[AFTER_SPEAKER]))
  write_csv(out / "cooccurrence_before.csv", cooccurrence_records(tables[BEFORE_FACES]))
  summary = {
      "out": os.fspath(out), "teacher": teacher.source, "clips": len(specs),
      "analyzed": len(analyses), "skipped": skipped,
      "settings": {"fps": config.fps, "max_duration_s": config.max_duration_s,
                   "speaker_method": config.speaker_method, "detector": face.model},
      "fluctuation": summarize_fluctuation(analyses),
      "cooccurrence": {view: cooccurrence_records(rows) for view, rows in tables.items()},
      "cooccurrence_basis": (
          "percent of the labelled frames (after_speaker: the speaker's face per frame; "
          "before_faces: every face event) of all clips of a main emotion, over all seven "
          "emotions including the main one (each row sums to 100); ranks order the six other "
          "emotions, 1 = most frequent, equal counts share the best rank"),
      "seconds": round(time.time() - started, 1),
  }
  (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
  return Run(summary, analyses, tables)


def summarize_fluctuation(analyses: Sequence[ClipAnalysis]) -> dict[str, Any]:
  """Per view, the mean over clips of each measure; and how often isolation lowered switches/s."""
  summary: dict[str, Any] = {}
  for view in VIEWS:
    values = collections.defaultdict(list)
    for a in analyses:
      for name, value in dataclasses.asdict(a.fluctuation[view]).items():
        values[name].append(value)
    summary[view] = {f"mean_{name}": (round(float(np.nanmean(v)), 4)
                                      if np.isfinite(v).any() else None)
                     for name, v in values.items()}
  before = [a.fluctuation[BEFORE_FACES].switches_per_s for a in analyses]
  after = [a.fluctuation[AFTER_SPEAKER].switches_per_s for a in analyses]
  summary["clips_fewer_switches_after"] = int(sum(b > a for b, a in zip(before, after)))
  summary["clips_more_switches_after"] = int(sum(b < a for b, a in zip(before, after)))
  return summary
