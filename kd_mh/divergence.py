"""Divergences between the face (teacher) and voice (student) outputs, and their time windows.

Every function is pure NumPy, computes in float64 and is vectorised over leading axes: the
probability divergences take p, q [..., K] (broadcastable, same K) and return [...].

* `jensen_shannon` (the default): natural log, so it lies in [0, ln 2]; symmetric and finite.
* `symmetric_kl`: KL(p||q) + KL(q||p) after an eps floor (see there); unbounded.
* `total_variation`: 0.5 * L1, in [0, 1].
* `hellinger`: sqrt(1 - sum sqrt(p q)), in [0, 1]; H^2 <= TV <= sqrt(2) H.
* `valence_arousal_distance`: Euclidean distance between the expected (valence, arousal) of p
  and q under `kd_mh.emotions.VALENCE_AROUSAL`; at most the largest distance between classes.

`DIVERGENCES` maps names to these; `divergence(name, face_probs, voice_probs)` dispatches.
`embedding_cosine` compares embeddings, not distributions, so it is not in the registry: callers
pass the teacher's embedding and the student's aligned output (which lives in the teacher's
embedding space) to it directly.

`sliding_windows` and `window_means` put face frames (e.g. 10 fps) and voice outputs on one
window grid (e.g. 2 s windows every 0.5 s) before the divergence is taken per window.
"""

from __future__ import annotations

import math
import types
from typing import Callable, Mapping, Optional

import numpy as np
from scipy import special

from kd_mh.emotions import EMOTIONS, NUM_CLASSES, VALENCE_AROUSAL

# Tolerance on sum(p) = 1 and p >= 0: float32 softmax outputs sum to 1 within ~1e-6.
PROB_ATOL = 1e-4
LN2 = math.log(2.0)
DEFAULT = "js"

# [K, 2] (valence, arousal) of each class in EMOTIONS order.
_VA = np.array([VALENCE_AROUSAL[name] for name in EMOTIONS], np.float64)


def as_distribution(p: np.ndarray, name: str = "p") -> np.ndarray:
  """`p` [..., K] as float64 probability vectors, exactly normalised.

  Raises:
    ValueError: if `p` has no class axis, fewer than 2 classes, non-finite or negative entries
      (beyond `PROB_ATOL`), or rows that do not sum to 1 within `PROB_ATOL`.
  """
  p = np.asarray(p, np.float64)
  if p.ndim == 0 or p.shape[-1] < 2:
    raise ValueError(f"{name} must have a class axis of size >= 2, got shape {p.shape}")
  if not np.all(np.isfinite(p)):
    raise ValueError(f"{name} has non-finite entries")
  if np.any(p < -PROB_ATOL):
    raise ValueError(f"{name} has negative entries (min {p.min():.3g})")
  sums = p.sum(axis=-1)
  if np.any(np.abs(sums - 1.0) > PROB_ATOL):
    worst = sums.flat[np.argmax(np.abs(sums - 1.0))]
    raise ValueError(f"{name} rows must sum to 1 (within {PROB_ATOL}); one sums to {worst:.6g}")
  p = np.clip(p, 0.0, None)
  return p / p.sum(axis=-1, keepdims=True)


def _pair(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  p, q = as_distribution(p, "p"), as_distribution(q, "q")
  if p.shape[-1] != q.shape[-1]:
    raise ValueError(f"p and q must have the same number of classes, got {p.shape} and {q.shape}")
  try:
    return np.broadcast_arrays(p, q)
  except ValueError:
    raise ValueError(f"p and q shapes do not broadcast: {p.shape} and {q.shape}") from None


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """JS(p, q) = KL(p||m)/2 + KL(q||m)/2 with m = (p + q)/2, natural log: in [0, ln 2]."""
  p, q = _pair(p, q)
  m = 0.5 * (p + q)
  # rel_entr gives 0 * log(0 / m) = 0, so no floor is needed: m > 0 wherever p or q is.
  js = 0.5 * (special.rel_entr(p, m).sum(-1) + special.rel_entr(q, m).sum(-1))
  return np.clip(js, 0.0, LN2)  # only rounding can leave [0, ln 2]


def symmetric_kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  """KL(p||q) + KL(q||p), natural log, after flooring p and q at `eps` and renormalising.

  The floor keeps the value finite when one distribution gives a class no mass (disjoint
  one-hots over K classes give about 2 ln(1/eps), 27.6 for the default eps). `eps=0` gives the
  unfloored value, which is inf in that case.
  """
  if eps < 0:
    raise ValueError(f"eps must be >= 0, got {eps}")
  p, q = _pair(p, q)
  if eps > 0:
    p = np.maximum(p, eps)
    p = p / p.sum(-1, keepdims=True)
    q = np.maximum(q, eps)
    q = q / q.sum(-1, keepdims=True)
  return np.maximum(special.rel_entr(p, q).sum(-1) + special.rel_entr(q, p).sum(-1), 0.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """0.5 * sum |p - q|, in [0, 1]."""
  p, q = _pair(p, q)
  return 0.5 * np.abs(p - q).sum(-1)


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """sqrt(1 - sum sqrt(p q)) = sqrt(0.5 * sum (sqrt p - sqrt q)^2), in [0, 1]."""
  p, q = _pair(p, q)
  bhattacharyya = np.sqrt(p * q).sum(-1)
  return np.sqrt(np.clip(1.0 - bhattacharyya, 0.0, 1.0))


def valence_arousal(p: np.ndarray) -> np.ndarray:
  """Expected (valence, arousal) [..., 2] under p [..., NUM_CLASSES] (EMOTIONS order)."""
  p = as_distribution(p, "p")
  if p.shape[-1] != NUM_CLASSES:
    raise ValueError(f"p must have {NUM_CLASSES} classes ({', '.join(EMOTIONS)}), got {p.shape}")
  return p @ _VA


def valence_arousal_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """Euclidean distance between the expected (valence, arousal) of p and of q."""
  return np.linalg.norm(valence_arousal(p) - valence_arousal(q), axis=-1)


def embedding_cosine(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """1 - cos(a, b) over the last axis of embeddings [..., D], in [0, 2].

  A zero vector has cosine 0 with anything (distance 1): norms are floored at `eps`.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-1]:
    raise ValueError(f"a and b must be [..., D] with the same D, got {a.shape} and {b.shape}")
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise ValueError("embeddings have non-finite entries")
  norms = (np.maximum(np.linalg.norm(a, axis=-1), eps)
           * np.maximum(np.linalg.norm(b, axis=-1), eps))
  cos = np.clip((a * b).sum(-1) / norms, -1.0, 1.0)
  return 1.0 - cos


Divergence = Callable[[np.ndarray, np.ndarray], np.ndarray]

DIVERGENCES: Mapping[str, Divergence] = types.MappingProxyType({
  "js": jensen_shannon,
  "symmetric_kl": symmetric_kl,
  "total_variation": total_variation,
  "hellinger": hellinger,
  "va": valence_arousal_distance,
})


def divergence(name: str, face_probs: np.ndarray, voice_probs: np.ndarray) -> np.ndarray:
  """The divergence `name` (a key of `DIVERGENCES`) between face and voice probabilities."""
  try:
    fn = DIVERGENCES[name]
  except KeyError:
    raise ValueError(f"unknown divergence {name!r}; expected one of "
                     f"{', '.join(DIVERGENCES)}") from None
  return fn(face_probs, voice_probs)


def sliding_windows(timestamps: np.ndarray, window_s: float, hop_s: float, start: float = 0.0,
                    end: Optional[float] = None) -> np.ndarray:
  """Windows [start + k hop, start + k hop + window) as a [W, 2] array of (start, end) seconds.

  The windows cover [start, end): the last one is the first that reaches `end`, so it may run
  past `end` (and hold fewer samples); a span shorter than one window gives one window.

  Args:
    timestamps: [T] sample times in seconds; they set `end` when it is None.
    window_s: window length > 0.
    hop_s: step between window starts > 0.
    start: time of the first window's start.
    end: end of the span; None: the last timestamp plus the median sample spacing (the end of
      the last sample's frame), or the last timestamp when there is a single sample time.
  """
  if not (window_s > 0 and hop_s > 0):
    raise ValueError(f"window_s and hop_s must be > 0, got {window_s} and {hop_s}")
  if end is None:
    times = np.unique(np.asarray(timestamps, np.float64))
    if times.size == 0 or not np.all(np.isfinite(times)):
      raise ValueError("end is None and timestamps are empty or non-finite")
    end = times[-1] + (float(np.median(np.diff(times))) if times.size > 1 else 0.0)
  if end < start:
    raise ValueError(f"end ({end}) must not precede start ({start})")
  # Relative tolerance so that spans that are whole numbers of hops add no sliver window.
  extra = math.ceil((end - start - window_s) / hop_s - 1e-9) if end - start > window_s else 0
  starts = start + hop_s * np.arange(1 + extra, dtype=np.float64)
  return np.stack([starts, starts + window_s], axis=-1)


def window_means(values: np.ndarray, timestamps: np.ndarray, mask: Optional[np.ndarray],
                 windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-window mean of the valid samples whose time falls in [window start, window end).

  Args:
    values: [T, ...] per-sample values (e.g. probabilities [T, K]).
    timestamps: [T] sample times in seconds.
    mask: [T] bool, the valid samples (e.g. frames with a face); None: all.
    windows: [W, 2] (start, end) seconds, e.g. from `sliding_windows`.

  Returns:
    (means [W, ...] float64, counts [W] int64); a window without valid samples has NaN means and
    count 0. Means of probability vectors are probability vectors.
  """
  values = np.asarray(values, np.float64)
  timestamps = np.asarray(timestamps, np.float64)
  windows = np.asarray(windows, np.float64)
  t = values.shape[0] if values.ndim else -1
  if timestamps.shape != (t,):
    raise ValueError(f"values [T, ...] and timestamps [T] disagree: {values.shape} and "
                     f"{timestamps.shape}")
  mask = np.ones(t, bool) if mask is None else np.asarray(mask)
  if mask.shape != (t,) or mask.dtype != bool:
    raise ValueError(f"mask must be bool [T]={t}, got {mask.dtype} {mask.shape}")
  if windows.ndim != 2 or windows.shape[1] != 2:
    raise ValueError(f"windows must be [W, 2], got {windows.shape}")
  member = ((timestamps[None, :] >= windows[:, :1]) & (timestamps[None, :] < windows[:, 1:])
            & mask[None, :])  # [W, T]
  counts = member.sum(axis=1)
  # Masked-out samples may hold NaN: zero them rather than multiply them by 0.
  flat = np.where(mask[:, None], values.reshape(t, -1), 0.0)
  with np.errstate(invalid="ignore", divide="ignore"):
    means = (member.astype(np.float64) @ flat) / counts[:, None]
  means[counts == 0] = np.nan
  return means.reshape((len(windows),) + values.shape[1:]), counts.astype(np.int64)
