"""Face detection, tracking, landmarks and aligned crops over a stream of sampled frames.

Speed drives the design (the prep pipeline must run at <= 0.1 real-time factor on one core):

* The full-frame detector (dlib HOG, or the CNN) runs on a downscaled copy of the frame and only
  every `detect_every` sampled frames, to find new faces and re-anchor existing tracks.
* The 68 landmarks are needed on every present frame anyway (mouth opening, crop alignment), so
  they also carry each box from one frame to the next: the rigid landmarks found inside the
  previous box shift it.
* Every `track_every` frames (and on full-detection frames) each track is confirmed by running
  the detector on a small window around its box, rescaled so the face is about `track_face_px`
  pixels (~1.5 ms with HOG); this also gives tighter boxes than the downscaled frame. Frames
  carried by landmarks stay provisional until such a detection confirms them: a track whose face
  is not found in `max_missed` + 1 checks in a row ends, and its unconfirmed frames are dropped,
  so a box that drifted onto the background never reaches the output.
* 128-d identity encodings (~80 ms each) are computed from aligned face chips kept at a track's
  birth and every `encode_every_s`, and only when identity is in doubt: to decide whether a face
  that appears is one lost a moment ago, and, when the clip ends, for tracks that another track
  never shares a frame with (they could be one person). A single face, or people seen side by
  side throughout, need none.

Boxes are [top, right, bottom, left] in source-frame pixels (face_recognition's convention),
clipped to the frame.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable

import cv2
import dlib
import numpy as np
import scipy.optimize
from face_recognition import api as fr_api

from data_prep.media import Frame

Box = tuple[int, int, int, int]  # top, right, bottom, left

MODELS = ("hog", "cnn")
N_LANDMARKS = 68
# 68-point layout (iBUG 300-W): eyes as seen in the image, inner lips, nose base.
_IMAGE_LEFT_EYE = slice(36, 42)
_IMAGE_RIGHT_EYE = slice(42, 48)
_INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper / lower inner-lip points
_NOSE_BASE = 33
_RIGID = slice(17, 48)  # brows, nose, eyes: points that speech and expression move least
# Where align_crop puts the face, as fractions of the crop side: eye centres CROP_EYE_DISTANCE
# apart on the line y = CROP_EYE_Y, the nose base CROP_NOSE_DROP below that line. This frames
# brows to chin like the FER2013 faces the teacher starts from.
CROP_EYE_Y = 0.38
CROP_EYE_DISTANCE = 0.36
CROP_NOSE_DROP = 0.25
_CHIP_SIZE = 150  # dlib's face-recognition network input (get_face_chip default)
_CHIP_PADDING = 0.25


@dataclasses.dataclass(frozen=True)
class FaceConfig:
  """How faces are found, followed, encoded and cropped (defaults: fast tracker)."""
  model: str = "hog"  # full-frame and window detector: "hog" (dlib HOG + SVM) or "cnn" (dlib MMOD)
  # Frames are downscaled to this long side to detect (None: never). HOG's window is 80 px, so a
  # 640 x 360 frame at upsample 0 finds faces from ~80 px: as small as 320 px at upsample 1 finds,
  # from real pixels and at half the cost.
  detect_max_side: int | None = 640
  upsample: int = 0  # detector upsampling of the (downscaled) frame: each halves the smallest face
  detect_every: int = 15  # full-frame detection every N sampled frames (and after a track is lost)
  detect_gray: bool = True  # HOG on the gray frame: a third faster than on RGB
  encode_every_s: float = 30.0  # refresh a track's identity chip this sparsely; 0: every frame
  always_encode: bool = False  # False: encode only where identity is in doubt
  crop_size: int = 64
  crop_channels: int = 1  # 1: grayscale (teacher input), 3: RGB
  track_every: int = 5  # confirm each track by a window detection every N frames
  track_face_px: int = 80  # the window is rescaled so the face is this big (HOG's window is 80)
  track_margin: float = 0.35  # search window border around the previous box, in box sizes
  track_threshold: float = 0.0  # HOG score a window detection needs (dlib's own default is 0)
  link_iou: float = 0.3  # a detection continues a track when their boxes overlap this much
  duplicate_iou: float = 0.5  # two tracks on one face: the younger one ends
  relink_distance: float = 0.5  # encoding distance to resume a lost track (same person is < 0.6)
  relink_max_gap_s: float = 3.0  # how long a lost track can be resumed
  max_missed: int = 1  # failed confirmations in a row that a track survives
  min_face: int = 24  # detections smaller than this (source pixels) are ignored

  def validate(self) -> None:
    """Raises ValueError naming the first bad field."""
    if self.model not in MODELS:
      raise ValueError(f"FaceConfig.model must be one of {MODELS}, got {self.model!r}")
    if self.detect_max_side is not None and self.detect_max_side < 32:
      raise ValueError(
          f"FaceConfig.detect_max_side must be >= 32 or None, got {self.detect_max_side}")
    positive = dict(detect_every=self.detect_every, track_every=self.track_every,
                    crop_size=self.crop_size, track_face_px=self.track_face_px,
                    min_face=self.min_face)
    for name, value in positive.items():
      if value < 1:
        raise ValueError(f"FaceConfig.{name} must be >= 1, got {value}")
    non_negative = dict(upsample=self.upsample, encode_every_s=self.encode_every_s,
                        track_margin=self.track_margin, relink_max_gap_s=self.relink_max_gap_s,
                        max_missed=self.max_missed)
    for name, value in non_negative.items():
      if value < 0:
        raise ValueError(f"FaceConfig.{name} must be >= 0, got {value}")
    if self.crop_channels not in (1, 3):
      raise ValueError(f"FaceConfig.crop_channels must be 1 or 3, got {self.crop_channels}")
    for name in ("link_iou", "duplicate_iou"):
      value = getattr(self, name)
      if not 0.0 < value <= 1.0:
        raise ValueError(f"FaceConfig.{name} must be in (0, 1], got {value}")


# The original study's approach and the speed baseline: face_recognition's defaults
# (`face_locations(frame)`: HOG on the RGB frame at full resolution, upsampled once) and an
# encoding of every face, on every sampled frame.
NAIVE = FaceConfig(detect_max_side=None, upsample=1, detect_every=1, detect_gray=False,
                   encode_every_s=0.0, always_encode=True, track_every=1)


@dataclasses.dataclass
class Track:
  """One face followed through the clip; lists are aligned with `frame_indices`."""
  track_id: int
  frame_indices: list[int] = dataclasses.field(default_factory=list)  # sampled frames present
  boxes: list[Box] = dataclasses.field(default_factory=list)
  mouth_open: list[float] = dataclasses.field(default_factory=list)  # see mouth_opening()
  crops: list[np.ndarray] = dataclasses.field(default_factory=list)  # size x size x channels uint8
  # (frame index, 128-d encoding); empty where identity is not in doubt (see the module doc).
  encodings: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)
  landmarks: list[np.ndarray] = dataclasses.field(default_factory=list)  # [68, 2] float32 (x, y)

  def __len__(self) -> int:
    return len(self.frame_indices)

  def mean_area(self) -> float:
    """Mean box area in source pixels over the present frames."""
    if not self.boxes:
      return 0.0
    top, right, bottom, left = np.asarray(self.boxes, np.float64).T
    return float(np.mean((bottom - top) * (right - left)))


@dataclasses.dataclass
class TrackingResult:
  tracks: list[Track]
  timestamps: list[float]  # per sampled frame, seconds on the video clock
  n_frames: int
  frame_size: tuple[int, int]  # (height, width); (0, 0) when there were no frames
  detector_calls: int  # full-frame detections
  window_calls: int  # detections on a window around a track
  landmark_calls: int
  encoder_calls: int
  seconds: dict[str, float]  # time spent per stage, for benchmarks


# ----------------------------------------------------------------------------------------------
# Pure geometry.


def iou(a: Box | np.ndarray, b: Box | np.ndarray) -> float:
  """Intersection over union of two [top, right, bottom, left] boxes."""
  top, bottom = max(a[0], b[0]), min(a[2], b[2])
  left, right = max(a[3], b[3]), min(a[1], b[1])
  inter = max(0.0, bottom - top) * max(0.0, right - left)
  union = (a[2] - a[0]) * (a[1] - a[3]) + (b[2] - b[0]) * (b[1] - b[3]) - inter
  return float(inter / union) if union > 0 else 0.0


def mouth_opening(landmarks: np.ndarray) -> float:
  """Inner-lip gap divided by the eye-to-nose-base height, from 68 landmarks.

  The normaliser is the distance from the eyes' midpoint to the nose base: a face height that a
  dropping jaw does not change, so the ratio moves only with the lips.
  """
  gap = np.mean([np.linalg.norm(landmarks[u] - landmarks[l]) for u, l in _INNER_LIP_PAIRS])
  eyes = (landmarks[_IMAGE_LEFT_EYE].mean(0) + landmarks[_IMAGE_RIGHT_EYE].mean(0)) / 2
  height = np.linalg.norm(landmarks[_NOSE_BASE] - eyes)
  return float(gap / height) if height > 0 else 0.0


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
  """2x3 similarity transform taking source pixels to a `size` crop with eyes level, face centred.

  Rotation levels the eye centres; the scale fits the eye distance plus the eye-to-nose-base drop
  (their sum varies less with head yaw and pitch than either alone, and neither moves when the
  mouth opens, so speech does not zoom the crop); the eyes' midpoint lands at
  (size / 2, CROP_EYE_Y * size).
  """
  left = landmarks[_IMAGE_LEFT_EYE].mean(0)
  right = landmarks[_IMAGE_RIGHT_EYE].mean(0)
  nose = landmarks[_NOSE_BASE]
  centre = (left + right) / 2
  dx, dy = right - left
  angle = math.atan2(dy, dx)
  cos, sin = math.cos(angle), math.sin(angle)
  eye_distance = math.hypot(dx, dy)
  # Nose drop measured perpendicular to the eye line.
  drop = abs(-sin * (nose[0] - centre[0]) + cos * (nose[1] - centre[1]))
  span = eye_distance + drop
  if span <= 0:
    raise ValueError("degenerate landmarks: the eyes and the nose coincide")
  scale = (CROP_EYE_DISTANCE + CROP_NOSE_DROP) * size / span
  linear = scale * np.array([[cos, sin], [-sin, cos]])
  target = np.array([size / 2.0, CROP_EYE_Y * size])
  return np.hstack([linear, (target - linear @ centre)[:, None]])


def align_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 64,
               channels: int = 1) -> np.ndarray:
  """A size x size x channels uint8 face crop with level eyes.

  `image` is RGB (HxWx3) or gray (HxW); `landmarks` are its 68 points as [68, 2] (x, y).
  """
  if channels not in (1, 3):
    raise ValueError(f"align_crop: channels must be 1 or 3, got {channels}")
  if image.ndim == 3 and channels == 1:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
  elif image.ndim == 2 and channels == 3:
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
  matrix = alignment_matrix(np.asarray(landmarks, np.float64), size)
  # Shrinking a face 2-4x with a bilinear warp aliases: warp at an integer multiple of the size,
  # then area-average down.
  shrink = 1.0 / math.hypot(matrix[0, 0], matrix[0, 1])
  oversample = max(1, min(4, int(round(shrink))))
  out_size = size * oversample
  crop = cv2.warpAffine(image, matrix * oversample, (out_size, out_size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
  if oversample > 1:
    crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
  return crop.reshape(size, size, channels)


def _clip_box(box: np.ndarray, height: int, width: int) -> Box:
  top, right, bottom, left = box
  return (int(round(max(top, 0))), int(round(min(right, width))),
          int(round(min(bottom, height))), int(round(max(left, 0))))


def _to_rect(box: np.ndarray) -> dlib.rectangle:
  top, right, bottom, left = (int(round(v)) for v in box)
  return dlib.rectangle(left, top, right, bottom)


def _landmark_array(shape: dlib.full_object_detection) -> np.ndarray:
  return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


# ----------------------------------------------------------------------------------------------
# The tracker.


def _detect(model: str, image: np.ndarray, upsample: int,
            threshold: float = 0.0) -> list[np.ndarray]:
  """Face boxes as float [top, right, bottom, left] from dlib's HOG or CNN detector."""
  if model == "hog":
    rects, scores, _ = fr_api.face_detector.run(image, upsample, threshold)
  else:
    found = fr_api.cnn_face_detector(image, upsample)
    rects, scores = [d.rect for d in found], [d.confidence for d in found]
  return [np.array([r.top(), r.right(), r.bottom(), r.left()], np.float64)
          for r, score in zip(rects, scores) if score >= threshold]


@dataclasses.dataclass
class _State:
  """A track's working state next to its public record."""
  track: Track
  box: np.ndarray  # float [top, right, bottom, left] in the latest frame
  landmarks: np.ndarray  # [68, 2] in the latest frame
  active: bool = True
  unconfirmed: int = 0  # trailing frames carried by landmarks since the last detection
  missed: int = 0  # failed confirmations in a row
  last_seen_s: float = 0.0
  last_chip_s: float = -math.inf
  chips: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)


class _Tracker:
  """Consumes frames one at a time; see the module docstring for the scheme."""

  def __init__(self, config: FaceConfig):
    config.validate()
    self.config = config
    self.states: list[_State] = []
    self.timestamps: list[float] = []
    self.frame_size: tuple[int, int] | None = None
    self.lost_one = False  # a track ended for want of detections in the last frame
    self.calls = dict(detector=0, window=0, landmarks=0, encoder=0)
    self.seconds = dict(detect=0.0, window=0.0, landmarks=0.0, crops=0.0, encode=0.0)

  # -- per frame ---------------------------------------------------------------------------------

  def add(self, frame: Frame) -> None:
    rgb = np.ascontiguousarray(frame.rgb)
    index = len(self.timestamps)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
      raise ValueError(f"frame {index}: expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if self.frame_size is None:
      self.frame_size = rgb.shape[:2]
    elif rgb.shape[:2] != self.frame_size:
      raise ValueError(f"frame {index}: size {rgb.shape[:2]} differs from the first frame's "
                       f"{self.frame_size}")
    self.timestamps.append(float(frame.timestamp_s))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # The CNN was trained on RGB; HOG works on either.
    detect_image = gray if self.config.model == "hog" and self.config.detect_gray else rgb

    active = [s for s in self.states if s.active]
    matched: dict[int, np.ndarray] = {}  # position in `active` -> full-frame detection
    births: list[np.ndarray] = []
    # Also right after a track is lost: a cut or a turned head may bring a face the schedule
    # would otherwise find only up to `detect_every` frames later.
    full = index % self.config.detect_every == 0 or self.lost_one
    self.lost_one = False
    if full:
      detections = self._detect_full(detect_image)
      matched, unmatched = _match(active, detections, self.config.link_iou)
      births = [detections[j] for j in unmatched]
    # A window at the tracking scale gives a tighter box than a downscaled frame does.
    coarse = full and self._detect_scale(detect_image.shape) < 1
    for i, state in enumerate(active):
      # Confirm on full-detection frames, when due, and after a failed check.
      due = full or state.missed or state.unconfirmed + 1 >= self.config.track_every
      box = matched.get(i)
      if due and (box is None or coarse):
        refined = self._detect_window(detect_image, state.box if box is None else box)
        box = box if refined is None else refined
      if box is not None:
        self._observe(state, index, rgb, gray, box)
      elif due and state.missed >= self.config.max_missed:
        self._end(state, drop=state.unconfirmed)
        self.lost_one = True
      else:
        state.missed += bool(due)
        self._carry(state, index, rgb, gray)
    self._drop_duplicates(index)
    for box in births:
      # A face already followed (e.g. confirmed by its window this frame) is not a new face.
      if any(s.active and iou(s.box, box) >= self.config.link_iou for s in self.states):
        continue
      refined = self._detect_window(detect_image, box) if coarse else None
      self._birth(index, rgb, gray, box if refined is None else refined)

  def _detect_scale(self, shape: tuple[int, ...]) -> float:
    max_side = self.config.detect_max_side
    return 1.0 if max_side is None else min(1.0, max_side / max(shape[:2]))

  def _detect_full(self, image: np.ndarray) -> list[np.ndarray]:
    start = time.perf_counter()
    height, width = image.shape[:2]
    scale = self._detect_scale(image.shape)
    if scale < 1:
      image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                         interpolation=cv2.INTER_AREA)
    boxes = [box / scale for box in _detect(self.config.model, image, self.config.upsample)]
    self.calls["detector"] += 1
    self.seconds["detect"] += time.perf_counter() - start
    return [b for b in boxes if min(b[2] - b[0], b[1] - b[3]) >= self.config.min_face]

  def _detect_window(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The detection overlapping `box` most in a window around it, or None."""
    start = time.perf_counter()
    height, width = image.shape[:2]
    top, right, bottom, left = box
    side = max(bottom - top, right - left)
    half = side * (0.5 + self.config.track_margin)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    y0, y1 = int(max(0, cy - half)), int(min(height, cy + half))
    x0, x1 = int(max(0, cx - half)), int(min(width, cx + half))
    best = None
    if y1 - y0 >= 8 and x1 - x0 >= 8:
      scale = self.config.track_face_px / side
      window = cv2.resize(image[y0:y1, x0:x1],
                          (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
      offset = np.array([y0, x0, y0, x0], np.float64)
      best_iou = self.config.link_iou
      for found in _detect(self.config.model, window, 0, self.config.track_threshold):
        candidate = found / scale + offset
        overlap = iou(candidate, box)
        if overlap >= best_iou and min(candidate[2] - candidate[0],
                                       candidate[1] - candidate[3]) >= self.config.min_face:
          best, best_iou = candidate, overlap
    self.calls["window"] += 1
    self.seconds["window"] += time.perf_counter() - start
    return best

  def _landmarks(self, gray: np.ndarray, box: np.ndarray) -> dlib.full_object_detection:
    start = time.perf_counter()
    shape = fr_api.pose_predictor_68_point(gray, _to_rect(box))
    self.calls["landmarks"] += 1
    self.seconds["landmarks"] += time.perf_counter() - start
    return shape

  def _observe(self, state: _State, index: int, rgb: np.ndarray, gray: np.ndarray,
               box: np.ndarray) -> None:
    """A detection found the face at `box`: everything before is confirmed."""
    state.box, state.unconfirmed, state.missed = box, 0, 0
    state.last_seen_s = self.timestamps[index]
    shape = self._landmarks(gray, box)
    self._record(state, index, rgb, gray, shape, _landmark_array(shape), detected=True)

  def _carry(self, state: _State, index: int, rgb: np.ndarray, gray: np.ndarray) -> None:
    """No detection this frame: landmarks found inside the previous box move it.

    Only the rigid points (brows, nose, eyes) move the box, and only by translation: the scale of
    landmarks fitted in a box follows the box, so rescaling from them feeds back on itself.
    """
    shape = self._landmarks(gray, state.box)
    landmarks = _landmark_array(shape)
    dx, dy = (landmarks[_RIGID] - state.landmarks[_RIGID]).mean(0)
    state.box = state.box + np.array([dy, dx, dy, dx])
    state.unconfirmed += 1
    self._record(state, index, rgb, gray, shape, landmarks, detected=False)

  def _record(self, state: _State, index: int, rgb: np.ndarray, gray: np.ndarray,
              shape: dlib.full_object_detection, landmarks: np.ndarray, detected: bool) -> None:
    """Appends this frame's box, landmarks, mouth opening and crop; keeps an identity chip."""
    start = time.perf_counter()
    config = self.config
    track = state.track
    track.frame_indices.append(index)
    track.boxes.append(_clip_box(state.box, *self.frame_size))
    track.landmarks.append(landmarks)
    track.mouth_open.append(mouth_opening(landmarks))
    track.crops.append(align_crop(gray if config.crop_channels == 1 else rgb, landmarks,
                                  config.crop_size, config.crop_channels))
    state.landmarks = landmarks
    self.seconds["crops"] += time.perf_counter() - start
    # Identity chips only from detected frames: a carried box may be drifting.
    now = self.timestamps[index]
    if detected and (not state.chips or now - state.last_chip_s >= config.encode_every_s - 1e-6):
      state.chips.append((index, dlib.get_face_chip(rgb, shape, _CHIP_SIZE, _CHIP_PADDING)))
      state.last_chip_s = now
      if config.always_encode:
        self._encode(state)

  def _end(self, state: _State, drop: int) -> None:
    """Ends a track, dropping its last `drop` frames (those no detection confirmed)."""
    state.active = False
    track = state.track
    for _ in range(min(drop, len(track.frame_indices))):
      for field in (track.frame_indices, track.boxes, track.landmarks, track.mouth_open,
                    track.crops):
        field.pop()
    # Identity evidence only from kept frames.
    last = track.frame_indices[-1] if track.frame_indices else -1
    state.chips = [(i, c) for i, c in state.chips if i <= last]
    track.encodings[:] = [(i, e) for i, e in track.encodings if i <= last]
    if track.frame_indices:
      state.last_seen_s = self.timestamps[last]

  def _drop_duplicates(self, index: int) -> None:
    """Two tracks that converged on one face: the younger one ends before this frame."""
    live = [s for s in self.states if s.active and s.track.frame_indices
            and s.track.frame_indices[-1] == index]
    for i, a in enumerate(live):
      for b in live[i + 1:]:
        if a.active and b.active and iou(a.box, b.box) >= self.config.duplicate_iou:
          younger = b if b.track.track_id > a.track.track_id else a
          self._end(younger, drop=max(1, younger.unconfirmed))

  def _birth(self, index: int, rgb: np.ndarray, gray: np.ndarray, box: np.ndarray) -> None:
    state = _State(track=Track(track_id=len(self.states)), box=box, landmarks=np.zeros((0, 2)))
    self._observe(state, index, rgb, gray, box)
    resumed = self._resumable(state)
    if resumed is None:
      self.states.append(state)
      return
    # The same person as a track lost a moment ago: continue that track.
    resumed.active, resumed.missed, resumed.unconfirmed = True, 0, 0
    resumed.box, resumed.landmarks = state.box, state.landmarks
    resumed.last_seen_s = resumed.last_chip_s = state.last_seen_s
    for field in ("frame_indices", "boxes", "landmarks", "mouth_open", "crops", "encodings"):
      getattr(resumed.track, field).extend(getattr(state.track, field))
    resumed.chips.extend(state.chips)

  def _resumable(self, state: _State) -> _State | None:
    """The recently lost track whose face matches the new one, if any."""
    lost = [s for s in self.states if not s.active and (s.chips or s.track.encodings)
            and state.last_seen_s - s.last_seen_s <= self.config.relink_max_gap_s]
    if not lost:
      return None
    new = self._encode(state)[-1]
    distances = [np.min(np.linalg.norm(self._encode(s) - new, axis=1)) for s in lost]
    best = int(np.argmin(distances))
    return lost[best] if distances[best] < self.config.relink_distance else None

  # -- identity encodings -----------------------------------------------------------------------

  def _encode(self, state: _State) -> np.ndarray:
    """Encodes the state's pending chips; returns all its encodings as [n, 128]."""
    done = {i for i, _ in state.track.encodings}
    pending = [(i, c) for i, c in state.chips if i not in done]
    if pending:
      start = time.perf_counter()
      vectors = fr_api.face_encoder.compute_face_descriptor([c for _, c in pending])
      state.track.encodings.extend(
          (i, np.asarray(v, np.float32)) for (i, _), v in zip(pending, vectors))
      state.track.encodings.sort(key=lambda e: e[0])
      self.calls["encoder"] += len(pending)
      self.seconds["encode"] += time.perf_counter() - start
    # Encoded chips are not needed again.
    state.chips.clear()
    return np.stack([e for _, e in state.track.encodings])

  def finish(self) -> TrackingResult:
    # Frames carried since the last confirmation are kept: the clip ended, not the face.
    for state in self.states:
      state.active = False
    kept = [s for s in self.states if s.track.frame_indices]
    frames = [set(s.track.frame_indices) for s in kept]
    for i, state in enumerate(kept):
      # Identity is in doubt only where another track is never on screen together with this
      # one: they could be one person. Faces seen side by side are different people.
      if self.config.always_encode or any(
          not frames[i] & other for j, other in enumerate(frames) if j != i):
        self._encode(state)
    return TrackingResult(
        tracks=[s.track for s in kept], timestamps=self.timestamps, n_frames=len(self.timestamps),
        frame_size=tuple(self.frame_size or (0, 0)), detector_calls=self.calls["detector"],
        window_calls=self.calls["window"], landmark_calls=self.calls["landmarks"],
        encoder_calls=self.calls["encoder"], seconds=dict(self.seconds))


def _match(states: list[_State], detections: list[np.ndarray],
           min_iou: float) -> tuple[dict[int, np.ndarray], list[int]]:
  """Assigns detections to tracks by maximum total IoU (Hungarian).

  Returns {track position: its detection} and the positions of the unmatched detections.
  """
  if not states or not detections:
    return {}, list(range(len(detections)))
  overlap = np.array([[iou(s.box, d) for d in detections] for s in states])
  rows, cols = scipy.optimize.linear_sum_assignment(-overlap)
  pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if overlap[r, c] >= min_iou]
  used = {c for _, c in pairs}
  return {r: detections[c] for r, c in pairs}, [j for j in range(len(detections)) if j not in used]


def track_faces(frames: Iterable[Frame], config: FaceConfig = FaceConfig()) -> TrackingResult:
  """Finds and follows every face through streamed sampled frames (frames are not kept).

  Frames are numbered in the order they arrive. Raises ValueError on a malformed frame.
  """
  tracker = _Tracker(config)
  for frame in frames:
    tracker.add(frame)
  return tracker.finish()
