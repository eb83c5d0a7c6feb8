"""Audio features: log-mel spectrograms of the utterance and the energy envelope used as a speaker cue."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
  sample_rate: int = 16000
  win_ms: float = 25.0
  hop_ms: float = 10.0
  n_mels: int = 64
  fmin: float = 20.0
  fmax: float | None = None  # None: sample_rate / 2
  floor: float = 1e-6  # added before the log so silence stays finite

  def validate(self) -> None:
    """Raises ValueError naming the first bad field."""
    for name in ("sample_rate", "win_ms", "hop_ms", "n_mels"):
      if getattr(self, name) <= 0:
        raise ValueError(f"LogMelConfig.{name} must be > 0, got {getattr(self, name)}")
    nyquist = self.sample_rate / 2
    if self.fmax is not None and not self.fmin < self.fmax <= nyquist:
      raise ValueError(f"LogMelConfig.fmax must be in (fmin, {nyquist:g}], got {self.fmax}")
    if not 0 <= self.fmin < nyquist:
      raise ValueError(f"LogMelConfig.fmin must be in [0, {nyquist:g}), got {self.fmin}")

  @property
  def win_length(self) -> int:
    return int(round(self.sample_rate * self.win_ms / 1000.0))

  @property
  def hop_length(self) -> int:
    return int(round(self.sample_rate * self.hop_ms / 1000.0))

  @property
  def n_fft(self) -> int:
    return int(2 ** np.ceil(np.log2(self.win_length)))


def log_mel(audio: np.ndarray, config: LogMelConfig = LogMelConfig(),
            block_frames: int = 4096) -> np.ndarray:
  """[n_frames, n_mels] float32 natural-log mel energies; frame k is centred at k * hop.

  Frames are centred (as librosa's `center=True` with zero padding), so
  n_frames = 1 + len(audio) // hop and the spectrogram spans the whole utterance to within one
  hop. Long audio is transformed `block_frames` frames at a time, which gives the same numbers
  with memory bounded by the block rather than by the clip.
  """
  audio = np.asarray(audio, dtype=np.float32)
  if audio.ndim != 1:
    raise ValueError(f"log_mel expects mono audio, got shape {audio.shape}")
  if audio.size == 0:
    return np.zeros((0, config.n_mels), np.float32)
  hop, n_fft = config.hop_length, config.n_fft
  padded = np.pad(audio, n_fft // 2)
  n_frames = 1 + audio.size // hop
  mel_basis = librosa.filters.mel(sr=config.sample_rate, n_fft=n_fft, n_mels=config.n_mels,
                                  fmin=config.fmin, fmax=config.fmax)
  out = np.empty((n_frames, config.n_mels), np.float32)
  for start in range(0, n_frames, block_frames):
    stop = min(start + block_frames, n_frames)
    segment = padded[start * hop:(stop - 1) * hop + n_fft]
    power = np.abs(librosa.stft(segment, n_fft=n_fft, hop_length=hop,
                                win_length=config.win_length, center=False)) ** 2
    out[start:stop] = np.log(mel_basis @ power + config.floor).T
  return out


def rms_envelope(audio: np.ndarray, sample_rate: int, times_s: np.ndarray,
                 win_s: float = 0.05) -> np.ndarray:
  """RMS energy of `audio` in a window of `win_s` centred on each of `times_s` (zero outside)."""
  audio = np.asarray(audio, dtype=np.float64)
  times_s = np.asarray(times_s, dtype=np.float64)
  if audio.size == 0:
    return np.zeros(times_s.shape, np.float32)
  # A cumulative sum of squares gives every window's energy in O(1).
  cumsum = np.concatenate([[0.0], np.cumsum(audio * audio)])
  half = max(1, int(round(win_s * sample_rate / 2)))
  centre = np.round(times_s * sample_rate).astype(np.int64)
  lo = np.clip(centre - half, 0, audio.size)
  hi = np.clip(centre + half, 0, audio.size)
  energy = (cumsum[hi] - cumsum[lo]) / np.maximum(hi - lo, 1)
  return np.sqrt(np.where(hi > lo, energy, 0.0)).astype(np.float32)
