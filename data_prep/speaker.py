"""Which face track is the speaker: audio-visual synchrony ("av") or the original clustering.

* ``cluster``, the original study's method: k-means over all face encodings of the clip, with k
  chosen by silhouette (k = 1 when the encodings, or the two 2-means centres, are closer than
  face_recognition's same-person distance); the largest cluster, counted in face-frames, is the
  speaker, and a tie goes to the bigger face.
* ``av`` (default): tracks are merged into identities by encoding distance (never two tracks seen in
  the same frame); each identity is scored by how well its mouth opening follows the speech energy
  (Pearson correlation with the log RMS envelope, gated by how much the mouth moves at all), plus
  smaller terms for face size and presence. A large, ever-present face that does not move its mouth
  with the voice loses to the real speaker. Without audio, or with silent audio, only size and
  presence count, and `scores["fallback"]` says why.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import scipy.spatial
import sklearn.cluster
import sklearn.metrics

from data_prep import faces
from data_prep import features
from data_prep.faces import Track, TrackingResult

METHODS = ("av", "cluster")
SAME_PERSON_DISTANCE = 0.6  # face_recognition's tolerance for 128-d dlib encodings
MAX_CLUSTERS = 6
# av score = SYNC_WEIGHT * sync * presence + SIZE_WEIGHT * size + PRESENCE_WEIGHT * presence,
# where size is relative to the largest identity's face.
SYNC_WEIGHT = 1.0
SIZE_WEIGHT = 0.2
PRESENCE_WEIGHT = 0.3
MIN_SYNC_FRAMES = 5  # fewer present frames give no meaningful correlation
MOUTH_ACTIVE_STD = 0.05  # mouth-opening std (eye-to-nose units) of a face clearly moving its lips
SILENT_RMS = 1e-3  # peak RMS below this (-60 dBFS) is silence
_LOG_FLOOR = 1e-2  # log envelope floor, relative to its peak: 40 dB of dynamic range


@dataclasses.dataclass
class SpeakerChoice:
  method: str  # "av" or "cluster"
  speaker_track_ids: list[int]  # one identity, possibly several tracks
  per_frame: np.ndarray  # [n_frames] int: the speaker's track at each sampled frame, or -1
  scores: dict  # JSON-serialisable evidence behind the choice; "speaker_score" is the winner's


def speaker_coverage(choice: SpeakerChoice) -> float:
  """Fraction of sampled frames with a speaker face."""
  per_frame = np.asarray(choice.per_frame)
  return float(np.mean(per_frame >= 0)) if per_frame.size else 0.0


def choose_speaker(tracking: TrackingResult, audio: np.ndarray | None, sample_rate: int = 16000,
                   method: str = "av") -> SpeakerChoice:
  """Picks the speaker's tracks; `audio` is mono on the video clock (sample 0 = first frame)."""
  if method not in METHODS:
    raise ValueError(f"speaker method must be one of {METHODS}, got {method!r}")
  if method == "cluster":
    return _choose_by_cluster(tracking)
  return _choose_by_av(tracking, audio, sample_rate)


def _per_frame(tracking: TrackingResult, speaker_tracks: list[Track]) -> np.ndarray:
  """The speaker track at each frame; where several are present, the largest box."""
  per_frame = np.full(tracking.n_frames, -1, np.int64)
  best_area = np.zeros(tracking.n_frames)
  for track in speaker_tracks:
    for frame, (top, right, bottom, left) in zip(track.frame_indices, track.boxes):
      area = (bottom - top) * (right - left)
      if per_frame[frame] < 0 or area > best_area[frame]:
        per_frame[frame], best_area[frame] = track.track_id, area
  return per_frame


def _round(value: float) -> float:
  return round(float(value), 4)


# ----------------------------------------------------------------------------------------------
# Clustering (the original study).


def _choose_k(encodings: np.ndarray) -> tuple[int, np.ndarray, dict[str, float]]:
  """k and labels: k = 1 for one person, else the best silhouette over k = 2..K.

  One person: every pair of encodings within the same-person distance, or, since a few odd
  frames can exceed it, a 2-means split whose centres are that close.
  """
  n = len(encodings)
  one = (1, np.zeros(n, np.int64), {})
  if n == 1 or scipy.spatial.distance.pdist(encodings).max() < SAME_PERSON_DISTANCE:
    return one
  if n == 2:
    return 2, np.arange(2), {}
  silhouettes, labelings = {}, {}
  for k in range(2, min(MAX_CLUSTERS, n - 1) + 1):
    kmeans = sklearn.cluster.KMeans(n_clusters=k, n_init=10, random_state=0).fit(encodings)
    if k == 2 and np.linalg.norm(np.subtract(*kmeans.cluster_centers_)) < SAME_PERSON_DISTANCE:
      return one
    if len(set(kmeans.labels_)) < 2:
      continue
    silhouettes[k] = float(sklearn.metrics.silhouette_score(encodings, kmeans.labels_))
    labelings[k] = kmeans.labels_
  if not silhouettes:
    return one
  k = max(silhouettes, key=silhouettes.get)
  return k, labelings[k], {str(key): _round(value) for key, value in silhouettes.items()}


def _choose_by_cluster(tracking: TrackingResult) -> SpeakerChoice:
  tracks = [t for t in tracking.tracks if t.frame_indices]
  encoded = [t for t in tracks if t.encodings]
  # The tracker skips encodings where identity is not in doubt: a track on screen together with
  # every other track (a single track, or people seen side by side throughout) is a person of its
  # own, a cluster of one. Each cluster counts face-frames and the mean face area.
  members: list[list[Track]] = [[t] for t in tracks if not t.encodings]
  frames = [float(len(t)) for t in tracks if not t.encodings]
  areas = [t.mean_area() for t in tracks if not t.encodings]
  silhouettes, k = {}, 0
  if encoded:
    owners = np.array([i for i, t in enumerate(encoded) for _ in t.encodings])
    encodings = np.stack([e for t in encoded for _, e in t.encodings]).astype(np.float64)
    # Each encoding stands for the frames of its track, as if every frame had been encoded.
    weights = np.array([len(t) / len(t.encodings) for t in encoded])[owners]
    k, labels, silhouettes = _choose_k(encodings)
    encoding_areas = np.array([encoded[o].mean_area() for o in owners])
    clusters = [[] for _ in range(k)]
    for i, track in enumerate(encoded):  # a track belongs where most of its encodings fall
      clusters[int(np.argmax(np.bincount(labels[owners == i], minlength=k)))].append(track)
    cluster_frames = np.bincount(labels, weights=weights, minlength=k)
    # A cluster made only of minority encodings of other tracks owns no track: it cannot be the
    # speaker, however many frames its encodings stand for.
    kept = [c for c in range(k) if clusters[c]]
    members = [clusters[c] for c in kept] + members
    frames = [float(cluster_frames[c]) for c in kept] + frames
    areas = [float(encoding_areas[labels == c].mean()) for c in kept] + areas
  if not members:
    return SpeakerChoice("cluster", [], _per_frame(tracking, []), {"k": 0, "speaker_score": 0.0})
  # Largest cluster; a tie (two faces in every frame) goes to the bigger face.
  best = max(range(len(members)), key=lambda c: (round(frames[c], 6), areas[c]))
  speaker = members[best]
  scores = {
      "k": len(members), "k_encoded": int(k), "silhouettes": silhouettes,
      "cluster_frames": [_round(f) for f in frames],
      "cluster_mean_area": [_round(a) for a in areas],
      "cluster_tracks": [[t.track_id for t in m] for m in members],
      "speaker_cluster": int(best),
      "speaker_score": _round(frames[best] / max(sum(frames), 1e-9)),
  }
  return SpeakerChoice("cluster", sorted(t.track_id for t in speaker),
                       _per_frame(tracking, speaker), scores)


# ----------------------------------------------------------------------------------------------
# Audio-visual synchrony.


def identities(tracks: list[Track]) -> list[list[Track]]:
  """Tracks grouped by person: closest first, merged while all cross pairs are the same person.

  Complete linkage on track-mean encodings, with the constraint that two tracks present in the
  same frame are different people. Tracks without encodings stay alone.
  """
  groups = [[t] for t in tracks]
  means = {t.track_id: np.mean([e for _, e in t.encodings], axis=0) for t in tracks if t.encodings}
  frames = {t.track_id: set(t.frame_indices) for t in tracks}

  def distance(a: list[Track], b: list[Track]) -> float:
    if any(x.track_id not in means or y.track_id not in means or frames[x.track_id] &
           frames[y.track_id] for x in a for y in b):
      return np.inf
    return max(float(np.linalg.norm(means[x.track_id] - means[y.track_id])) for x in a for y in b)

  while len(groups) > 1:
    pairs = [(distance(a, b), i, j) for (i, a), (j, b) in itertools.combinations(
        enumerate(groups), 2)]
    best, i, j = min(pairs)
    if best >= SAME_PERSON_DISTANCE:
      break
    groups[i] = groups[i] + groups[j]
    del groups[j]
  return groups


def _log_envelope(audio: np.ndarray | None, sample_rate: int,
                  timestamps: np.ndarray) -> tuple[np.ndarray | None, str | None]:
  """Log RMS around each sampled frame, or (None, why not)."""
  if audio is None:
    return None, "no audio"
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 1:
    raise ValueError(f"choose_speaker expects mono audio, got shape {audio.shape}")
  # Each frame's window spans the interval between sampled frames.
  step = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 0.1
  envelope = features.rms_envelope(audio, sample_rate, timestamps, win_s=step)
  peak = float(envelope.max()) if envelope.size else 0.0
  if peak < SILENT_RMS:
    return None, "silent audio"
  return np.log(envelope + _LOG_FLOOR * peak), None


def _sync(identity: list[Track], log_envelope: np.ndarray) -> tuple[float, float]:
  """(correlation of mouth opening with log energy over present frames, mouth-opening std)."""
  frames = np.array([f for t in identity for f in t.frame_indices])
  mouth = np.array([m for t in identity for m in t.mouth_open])
  mouth_std = float(mouth.std()) if mouth.size else 0.0
  if len(frames) < MIN_SYNC_FRAMES or mouth_std == 0 or log_envelope[frames].std() == 0:
    return 0.0, mouth_std
  return float(np.corrcoef(mouth, log_envelope[frames])[0, 1]), mouth_std


def _choose_by_av(tracking: TrackingResult, audio: np.ndarray | None,
                  sample_rate: int) -> SpeakerChoice:
  tracks = [t for t in tracking.tracks if t.frame_indices]
  groups = identities(tracks)
  log_envelope, fallback = _log_envelope(audio, sample_rate, np.asarray(tracking.timestamps))
  n_frames = max(tracking.n_frames, 1)
  largest = max((np.mean([t.mean_area() for t in g]) for g in groups), default=1.0)
  rows = []
  for group in groups:
    presence = len({f for t in group for f in t.frame_indices}) / n_frames
    size = float(np.mean([t.mean_area() for t in group])) / max(largest, 1e-9)
    correlation, mouth_std = (0.0, 0.0) if log_envelope is None else _sync(group, log_envelope)
    sync = correlation * min(1.0, mouth_std / MOUTH_ACTIVE_STD)
    score = SYNC_WEIGHT * sync * presence + SIZE_WEIGHT * size + PRESENCE_WEIGHT * presence
    rows.append({"tracks": [t.track_id for t in group], "presence": _round(presence),
                 "size": _round(size), "correlation": _round(correlation),
                 "mouth_std": _round(mouth_std), "sync": _round(sync), "score": _round(score)})
  best = max(range(len(groups)), key=lambda i: rows[i]["score"], default=None)
  speaker = groups[best] if best is not None else []
  scores = {"identities": rows, "fallback": fallback,
            "speaker_identity": best, "speaker_score": rows[best]["score"] if rows else 0.0}
  return SpeakerChoice("av", sorted(t.track_id for t in speaker), _per_frame(tracking, speaker),
                       scores)


# ----------------------------------------------------------------------------------------------
# Scoring a choice against known boxes (generated clips, composites with a pasted bystander).


def chosen_boxes(tracking: TrackingResult,
                 choice: SpeakerChoice) -> list[tuple[float, faces.Box | None]]:
  """Per sampled frame, its timestamp and the chosen speaker's box (None where none is chosen)."""
  boxes = {t.track_id: dict(zip(t.frame_indices, t.boxes)) for t in tracking.tracks}
  return [(t, boxes[k][i] if k >= 0 else None)
          for i, (t, k) in enumerate(zip(tracking.timestamps, choice.per_frame))]


def isolation_scores(chosen: Sequence[tuple[float, Sequence[int] | None]],
                     speaker_boxes: Sequence[Sequence[int] | None], fps: float,
                     bystander_boxes: Sequence[Sequence[int] | None] | None = None,
                     iou_threshold: float = 0.4) -> tuple[float, float]:
  """(share of the true speaker's frames given to the speaker, share of bystander frames taken).

  `chosen` holds, per sampled frame, its timestamp (seconds on the video clock) and the chosen
  speaker box or None (see `chosen_boxes`). The ground truth is indexed by video frame at `fps`:
  `speaker_boxes[i]` and `bystander_boxes[i]` are the [top, right, bottom, left] boxes of the
  true speaker and of the bystander in video frame i, or None where that face is not on screen
  (or not known). A sampled frame at t is matched to video frame round(t * fps), and the chosen
  box lands on a face when their IoU exceeds `iou_threshold`. A clip without a speaker (or a
  bystander) frame scores 0 on that side.
  """
  n = len(speaker_boxes)
  if n == 0:
    raise ValueError("isolation_scores: speaker_boxes is empty")
  if fps <= 0:
    raise ValueError(f"isolation_scores: fps must be positive, got {fps}")
  if bystander_boxes is None:
    bystander_boxes = [None] * n
  if len(bystander_boxes) != n:
    raise ValueError(f"isolation_scores: {len(bystander_boxes)} bystander boxes for {n} speaker "
                     f"boxes; both must have one entry per video frame")
  speaker_hits = speaker_frames = bystander_hits = bystander_frames = 0
  for t, box in chosen:
    video_frame = min(int(round(t * fps)), n - 1)
    true_speaker, true_bystander = speaker_boxes[video_frame], bystander_boxes[video_frame]
    if true_speaker is not None:
      speaker_frames += 1
      speaker_hits += box is not None and faces.iou(box, true_speaker) > iou_threshold
    if true_bystander is not None:
      bystander_frames += 1
      bystander_hits += box is not None and faces.iou(box, true_bystander) > iou_threshold
  return speaker_hits / max(speaker_frames, 1), bystander_hits / max(bystander_frames, 1)
