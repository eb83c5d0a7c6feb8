"""The demo corpus: talking faces warped from packaged photographs, with emotional synthetic speech.

kd_mh builds its demo data on the user's machine from real photographs that ship inside installed
packages (matplotlib's `grace_hopper.jpg`, scikit-image's `astronaut` and `lfw_subset` faces). Each
clip shows a speaker whose face carries one emotion (an expression template applied to the photo's
68 landmarks, warped per triangle) and whose voice carries another or the same one (a glottal
source through vowel formants whose prosody follows published acoustic profiles). The speaker's
jaw follows the voice's articulation envelope frame by frame; an optional bystander, a smaller
face to the side, has its own head motion, expression and a mouth that ignores the voice.

Identities: the 31 packaged faces (`SPEAKERS` + `BYSTANDERS`), each with identities derived from
its photo (`with_variants`, "lfw_003~1": reshaped face, changed appearance, `_variant`), and every
identity with its own voice drawn from continuous ranges (`voice_of`). A clip's bystander is
another person of its split. Splits hold out whole photographs, so no face, nor any identity
derived from it, is seen in two splits.

This is demo data and ground truth for tests, not a research dataset: expressions are geometric
caricatures of the Facial Action Coding System's prototypes, exaggerated (`EXPRESSION_GAIN`) so
that they outweigh the differences between faces at the teacher's crop size, and the voice is a
formant synthesiser without words whose emotion profiles are pushed further apart than acted
speech on the cues that do not depend on the speaker's register (`VOICE_PROFILES`). Both are
made to be learnable from a few hundred clips, which says nothing about real faces or voices.

Output of `make_demo_corpus(OUT)` (MELD's layout, so the MELD reader reads it):

  OUT/{train,dev,test}_sent_emo.csv   MELD's columns; `Emotion` is the clip's VOICE emotion
  OUT/train_splits/dia{D}_utt{U}.mp4    and dev_splits_complete/, output_repeated_splits_test/
  OUT/ground_truth.jsonl              one JSON object per clip (see `make_clip`)

Splits are speaker-independent: every photograph (as speaker or bystander, with the identities
derived from it) appears in one split only.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import pathlib
import re
import types
import zlib
from typing import Any, Iterator, Mapping, Sequence

import cv2
import face_recognition
import matplotlib.cbook
import numpy as np
import PIL.Image
import scipy.signal
import scipy.spatial
import skimage.data
import tqdm

from data_prep import media
from data_prep.corpora import demo
from data_prep.corpora import meld
from data_prep.corpora import splits
from data_prep.corpora.base import ClipSpec
from kd_mh import emotions

SAMPLE_RATE = 16000

PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------------
# Voice: prosody profiles and a formant synthesiser.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VoiceProfile:
  """Prosody of one emotion, relative to the speaker's neutral voice."""
  f0_scale: float  # mean F0 relative to the speaker's neutral F0
  f0_range_st: float  # height of pitch accents, semitones (F0 range / variability)
  rate_syl_s: float  # speech rate, syllables per second
  level_db: float  # loudness of the voiced parts relative to neutral
  jitter: float  # cycle-to-cycle standard deviation of the glottal period, relative
  shimmer: float  # cycle-to-cycle standard deviation of the pulse amplitude, relative
  tilt_hz: float  # corner of the one-pole low-pass on the source; lower = steeper spectral tilt
  pause_s: float  # mean pause between phrases
  final_st: float  # F0 movement over a phrase's last syllable (semitones; > 0 rises)


# Directions and rough sizes follow the reviews of vocal emotion expression:
#   Banse, R. & Scherer, K. R. (1996). Acoustic profiles in vocal emotion expression. Journal of
#     Personality and Social Psychology 70(3): 614-636.
#   Juslin, P. N. & Laukka, P. (2003). Communication of emotions in vocal expression and music
#     performance: Different channels, same code? Psychological Bulletin 129(5): 770-814 (Table 11).
#   Murray, I. R. & Arnott, J. L. (1993). Toward the simulation of emotion in synthetic speech.
#     Journal of the Acoustical Society of America 93(2): 1097-1108 (Table I; disgust).
# Anger: high F0, wide range, fast, loud, flat tilt (much high-frequency energy). Sadness: low F0,
# narrow range, slow, soft, steep tilt, irregular. Fear: high F0, narrow range, fast, irregular
# (jitter). Happiness: high F0, wide range, fairly fast, regular. Disgust: low F0, slow, falling
# terminal contours. Surprise (not in Juslin & Laukka's summary): high F0, wide range and rising
# contours, as in Murray & Arnott's and later synthesis rule sets. The numbers are settings chosen
# to follow those directions, not measurements, and they are pushed apart further than acted
# speech would be on the cues that survive a speaker's own register (F0 range, rate, tilt,
# pauses, jitter, the final contour): an utterance's mean F0 says little about its emotion once
# voices span 95-240 Hz (`voice_of`), so the demo's classes are made to differ on the others.
VOICE_PROFILES: Mapping[str, VoiceProfile] = types.MappingProxyType({
  "angry": VoiceProfile(1.30, 5.0, 6.0, 6.0, 0.012, 0.07, 4000.0, 0.15, -4.0),
  "disgust": VoiceProfile(0.88, 4.5, 3.6, -2.0, 0.012, 0.06, 1300.0, 0.50, -8.0),
  "fear": VoiceProfile(1.42, 1.5, 6.8, -1.0, 0.040, 0.10, 1600.0, 0.20, 2.0),
  "happy": VoiceProfile(1.25, 9.0, 5.0, 3.0, 0.005, 0.03, 2400.0, 0.25, 1.0),
  "sad": VoiceProfile(0.85, 0.6, 2.7, -6.0, 0.020, 0.08, 500.0, 0.70, -2.0),
  "surprise": VoiceProfile(1.35, 6.0, 4.2, 3.0, 0.005, 0.03, 2000.0, 0.40, 10.0),
  "neutral": VoiceProfile(1.00, 2.0, 4.5, 0.0, 0.005, 0.03, 1200.0, 0.30, -2.0),
})


@dataclasses.dataclass(frozen=True)
class Voice:
  """A speaker's neutral voice."""
  f0_hz: float = 120.0  # neutral speaking F0
  formant_scale: float = 1.0  # vocal-tract length factor; about 1.17 for adult female voices
  rate_scale: float = 1.0  # the speaker's own tempo: multiplies every profile's speech rate
  tilt_scale: float = 1.0  # the speaker's own voice quality: multiplies the tilt corner


LOW_VOICE = Voice(118.0, 1.0)
HIGH_VOICE = Voice(205.0, 1.17)


@dataclasses.dataclass(frozen=True)
class Speech:
  """A synthesised utterance and the signals that drive the face."""
  audio: np.ndarray  # float32 [n], in [-1, 1]
  sample_rate: int
  envelope: np.ndarray  # float32 [n] in [0, 1]: mouth opening (syllable envelope x vowel openness)
  f0: np.ndarray  # float32 [n] F0 in Hz while voiced, 0 elsewhere
  text: str  # the syllables spoken, as pseudo-words


# Vowel formants F1-F3 in Hz for an adult male voice (Peterson, G. E. & Barney, H. L. (1952).
# Control methods used in a study of the vowels. JASA 24(2): 175-184) and how open the mouth is.
_VOWELS: Mapping[str, tuple[tuple[float, float, float], float]] = types.MappingProxyType({
  "a": ((730.0, 1090.0, 2440.0), 1.0),
  "e": ((530.0, 1840.0, 2480.0), 0.7),
  "i": ((270.0, 2290.0, 3010.0), 0.35),
  "o": ((570.0, 840.0, 2410.0), 0.75),
  "u": ((300.0, 870.0, 2240.0), 0.4),
})
_FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0)
# Unvoiced onsets: (kind, band low Hz, band high Hz, level relative to the voiced RMS in dB).
_CONSONANTS: Mapping[str, tuple[str, float, float, float]] = types.MappingProxyType({
  "s": ("fricative", 4000.0, 7500.0, -12.0),
  "sh": ("fricative", 2000.0, 5000.0, -12.0),
  "f": ("fricative", 1500.0, 7500.0, -20.0),
  "h": ("fricative", 500.0, 4000.0, -22.0),
  "t": ("plosive", 3000.0, 7000.0, -8.0),
  "k": ("plosive", 1500.0, 4000.0, -8.0),
  "p": ("plosive", 500.0, 3000.0, -10.0),
})
_REFERENCE_RMS = 0.06  # RMS of a neutral voice's vowels (about -24 dBFS)


@dataclasses.dataclass(frozen=True)
class _Syllable:
  onset: str  # consonant key of _CONSONANTS, or "" for a bare vowel
  vowel: str
  start: float  # seconds: onset start
  nucleus: float  # seconds: vowel start
  end: float  # seconds: vowel end
  accent: float  # 0 (unstressed) .. 1 (pitch accent)
  phrase: int
  final: bool  # last syllable of its phrase


def _plan_syllables(profile: VoiceProfile, duration_s: float,
                    rng: np.random.Generator) -> list[_Syllable]:
  """Phrases of 3-7 syllables separated by pauses, filling `duration_s` (short edge silences)."""
  syllables: list[_Syllable] = []
  t = rng.uniform(0.08, 0.25)
  end = duration_s - rng.uniform(0.1, 0.2)
  onsets = list(_CONSONANTS)
  vowels = list(_VOWELS)
  phrase = 0
  while True:
    count = int(rng.integers(3, 8))
    phrase_syllables = []
    for _ in range(count):
      length = rng.uniform(0.75, 1.25) / profile.rate_syl_s
      if t + length > end:
        break
      onset = onsets[int(rng.integers(len(onsets)))] if rng.random() < 0.7 else ""
      share = 0.0 if not onset else (0.28 if _CONSONANTS[onset][0] == "fricative" else 0.18)
      accent = float(rng.random() < 0.35) * rng.uniform(0.6, 1.0)
      phrase_syllables.append(_Syllable(
          onset, vowels[int(rng.integers(len(vowels)))], t, t + share * length, t + length,
          accent, phrase, False))
      t += length
    if phrase_syllables:
      phrase_syllables[-1] = dataclasses.replace(phrase_syllables[-1], final=True)
      syllables.extend(phrase_syllables)
    if len(phrase_syllables) < count:
      return syllables
    t += profile.pause_s * rng.uniform(0.6, 1.4)
    phrase += 1


def _raised_cosine_envelope(n: int, sample_rate: int, start: float, stop: float,
                            attack_s: float, release_s: float) -> tuple[int, np.ndarray]:
  """(first sample, values) of a 0 -> 1 -> 0 envelope over [start, stop) seconds."""
  lo, hi = int(round(start * sample_rate)), min(n, int(round(stop * sample_rate)))
  length = max(hi - lo, 0)
  t = np.arange(length) / sample_rate
  span = length / sample_rate
  attack = min(attack_s, span / 2)
  release = min(release_s, span / 2)
  rise = np.clip(t / max(attack, 1e-6), 0.0, 1.0)
  fall = np.clip((span - t) / max(release, 1e-6), 0.0, 1.0)
  return lo, (0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))).astype(np.float64)


def _articulation(syllables: Sequence[_Syllable], n: int,
                  sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-sample voicing amplitude and mouth opening of a syllable plan."""
  voicing = np.zeros(n)
  mouth = np.zeros(n)
  for syl in syllables:
    lo, env = _raised_cosine_envelope(n, sample_rate, syl.nucleus, syl.end, 0.03, 0.05)
    gain = (1.0 + 0.35 * syl.accent) * (0.8 if syl.final else 1.0)
    voicing[lo:lo + env.size] += gain * env
    mouth[lo:lo + env.size] += _VOWELS[syl.vowel][1] * env
  return voicing, np.clip(mouth, 0.0, 1.0)


def mouth_schedule(duration_s: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Per-sample mouth opening of silent talking, independent of any voice (a bystander's lips)."""
  rng = np.random.default_rng(seed)
  profile = VOICE_PROFILES[emotions.EMOTIONS[int(rng.integers(emotions.NUM_CLASSES))]]
  n = int(round(duration_s * sample_rate))
  return _articulation(_plan_syllables(profile, duration_s, rng), n, sample_rate)[1]


def _f0_contour(syllables: Sequence[_Syllable], profile: VoiceProfile, voice: Voice, n: int,
                sample_rate: int, rng: np.random.Generator) -> np.ndarray:
  """F0 in Hz per sample: phrase declination + pitch accents + terminal glide + slow drift."""
  t = np.arange(n) / sample_rate
  semitones = np.zeros(n)
  for phrase in sorted({s.phrase for s in syllables}):
    members = [s for s in syllables if s.phrase == phrase]
    start, stop = members[0].start, members[-1].end
    inside = (t >= start) & (t < stop)
    declination = 1.0 + 0.3 * profile.f0_range_st
    semitones[inside] += declination * (0.5 - (t[inside] - start) / max(stop - start, 1e-3))
    last = members[-1]
    glide = np.clip((t - last.nucleus) / max(last.end - last.nucleus, 1e-3), 0.0, 1.0)
    gliding = (t >= last.nucleus) & (t < last.end + 0.05)
    semitones += np.where(gliding, profile.final_st * glide, 0.0)
  for syl in syllables:
    if syl.accent > 0:
      centre, width = (syl.nucleus + syl.end) / 2, max((syl.end - syl.nucleus) / 2.5, 0.01)
      semitones += profile.f0_range_st * syl.accent * np.exp(-0.5 * ((t - centre) / width) ** 2)
  control = rng.normal(0.0, 0.12, size=int(n / sample_rate * 50) + 2)
  drift = np.clip(np.cumsum(control), -0.5, 0.5)
  semitones += np.interp(t * 50, np.arange(drift.size), drift)
  return voice.f0_hz * profile.f0_scale * 2.0 ** (semitones / 12.0)


def _glottal_source(f0: np.ndarray, voicing: np.ndarray, profile: VoiceProfile, sample_rate: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Rosenberg glottal-flow pulses with jitter and shimmer, placed at sub-sample precision.

  Returns (source, voiced F0 per sample).
  """
  n = f0.size
  times, periods = [], []
  t = 0.0
  while t < n / sample_rate:
    period = (1.0 / f0[min(int(t * sample_rate), n - 1)]) * (1.0 + profile.jitter * rng.normal())
    times.append(t)
    periods.append(period)
    t += period
  times_a, periods_a = np.array(times), np.array(periods)
  amplitude = voicing[np.minimum((times_a * sample_rate).astype(np.int64), n - 1)]
  amplitude = amplitude * (1.0 + profile.shimmer * rng.normal(size=amplitude.size))
  keep = amplitude > 1e-3
  times_a, periods_a, amplitude = times_a[keep], periods_a[keep], amplitude[keep]
  source = np.zeros(n)
  voiced_f0 = np.zeros(n)
  if times_a.size:
    open_q, close_q = 0.4, 0.16  # opening and closing phases as fractions of the period
    length = int(np.ceil(periods_a.max() * (open_q + close_q) * sample_rate)) + 2
    first = np.floor(times_a * sample_rate).astype(np.int64)
    index = first[:, None] + np.arange(length)[None, :]
    phase = (index / sample_rate - times_a[:, None]) / periods_a[:, None]
    flow = np.where(phase < open_q, 0.5 - 0.5 * np.cos(np.pi * phase / open_q),
                    np.cos(np.pi * (phase - open_q) / (2 * close_q)))
    flow = np.where((phase >= 0) & (phase < open_q + close_q), flow, 0.0) * amplitude[:, None]
    valid = index < n
    source = np.bincount(index[valid], weights=flow[valid], minlength=n)[:n]
    # Each sample's F0 is that of the period it falls in.
    owner = np.searchsorted(times_a, np.arange(n) / sample_rate, side="right") - 1
    inside = (owner >= 0) & (np.arange(n) / sample_rate < times_a[np.maximum(owner, 0)]
                             + periods_a[np.maximum(owner, 0)] * 1.5)
    voiced_f0 = np.where(inside & (voicing > 0.05), 1.0 / periods_a[np.maximum(owner, 0)], 0.0)
  return source, voiced_f0


def _formant_filter(formant_scale: float, vowel: str, sample_rate: int) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
  """(b, a) of three cascaded two-pole resonators with unit gain at DC."""
  a = np.array([1.0])
  gain = 1.0
  for freq, bandwidth in zip(_VOWELS[vowel][0], _FORMANT_BANDWIDTHS):
    radius = np.exp(-np.pi * bandwidth * formant_scale / sample_rate)
    theta = 2 * np.pi * min(freq * formant_scale, 0.45 * sample_rate) / sample_rate
    pole = np.array([1.0, -2 * radius * np.cos(theta), radius ** 2])
    a = np.convolve(a, pole)
    gain *= pole.sum()
  return np.array([gain]), a


def synthesize_speech(emotion: str, duration_s: float, voice: Voice = LOW_VOICE, seed: int = 0,
                      sample_rate: int = SAMPLE_RATE) -> Speech:
  """Speech-like audio of `duration_s` whose prosody follows `VOICE_PROFILES[emotion]`.

  A glottal pulse train (with the profile's jitter, shimmer and F0 contour) passes a spectral-tilt
  low-pass and one vowel's formant filter per syllable; syllables start with a noise burst or
  fricative, phrases are separated by pauses. Deterministic for a seed.
  """
  if emotion not in VOICE_PROFILES:
    raise emotions.LabelError(
        f"unknown voice emotion {emotion!r}; expected one of {', '.join(emotions.EMOTIONS)}")
  if duration_s <= 0:
    raise ValueError(f"duration_s must be positive, got {duration_s}")
  profile = VOICE_PROFILES[emotion]
  # Emotion profiles are relative to the speaker's neutral voice: tempo and tilt scale with it.
  profile = dataclasses.replace(profile, rate_syl_s=profile.rate_syl_s * voice.rate_scale,
                                tilt_hz=profile.tilt_hz * voice.tilt_scale)
  rng = np.random.default_rng(seed)
  n = int(round(duration_s * sample_rate))
  syllables = _plan_syllables(profile, duration_s, rng)
  voicing, mouth = _articulation(syllables, n, sample_rate)
  f0 = _f0_contour(syllables, profile, voice, n, sample_rate, rng)
  source, voiced_f0 = _glottal_source(f0, voicing, profile, sample_rate, rng)
  # A little aspiration noise, gated by voicing, keeps the source from sounding buzzy.
  source += 0.02 * rng.normal(size=n) * voicing
  corner = np.exp(-2 * np.pi * profile.tilt_hz / sample_rate)
  source = scipy.signal.lfilter([1.0 - corner], [1.0, -corner], source)

  voiced = np.zeros(n)
  tail = int(0.03 * sample_rate)
  for syl in syllables:
    lo, hi = int(round(syl.nucleus * sample_rate)), min(n, int(round(syl.end * sample_rate)))
    b, a = _formant_filter(voice.formant_scale, syl.vowel, sample_rate)
    segment = scipy.signal.lfilter(b, a, np.concatenate([source[lo:hi], np.zeros(tail)]))
    stop = min(n, lo + segment.size)
    voiced[lo:stop] += segment[:stop - lo]
  voiced = np.concatenate([[0.0], np.diff(voiced)])  # lip radiation: a first difference
  nuclei = voicing > 0.5
  voiced_rms = np.sqrt(np.mean(voiced[nuclei] ** 2)) if nuclei.any() else 1.0
  target = _REFERENCE_RMS * 10.0 ** (profile.level_db / 20.0)
  audio = voiced * (target / max(voiced_rms, 1e-9))

  noise = rng.normal(size=n)
  for key, (kind, low, high, level_db) in _CONSONANTS.items():
    bursts = [s for s in syllables if s.onset == key]
    if not bursts:
      continue
    gate = np.zeros(n)
    for syl in bursts:
      start = syl.start if kind == "fricative" else syl.start + 0.6 * (syl.nucleus - syl.start)
      lo, env = _raised_cosine_envelope(n, sample_rate, start, syl.nucleus + 0.01, 0.01, 0.015)
      gate[lo:lo + env.size] += env
    sos = scipy.signal.butter(4, [low, min(high, 0.45 * sample_rate)], btype="bandpass",
                              fs=sample_rate, output="sos")
    band = scipy.signal.sosfilt(sos, noise)
    band *= target * 10.0 ** (level_db / 20.0) / max(np.sqrt(np.mean(band ** 2)), 1e-9)
    audio += band * gate
  peak = np.abs(audio).max()
  if peak > 0.99:  # rare (loud, accented vowels): scale down rather than clip
    audio *= 0.99 / peak
  return Speech(audio.astype(np.float32), sample_rate, mouth.astype(np.float32),
                voiced_f0.astype(np.float32), _transcript(syllables, profile))


def _transcript(syllables: Sequence[_Syllable], profile: VoiceProfile) -> str:
  """Pseudo-words of two syllables; phrases end in '.', or '?' / '!' for rising / loud voices."""
  mark = "?" if profile.final_st > 3 else ("!" if profile.level_db >= 3 else ".")
  phrases = []
  for phrase in sorted({s.phrase for s in syllables}):
    parts = [s.onset + s.vowel for s in syllables if s.phrase == phrase]
    words = ["".join(parts[i:i + 2]) for i in range(0, len(parts), 2)]
    phrases.append(" ".join(words).capitalize() + mark)
  return " ".join(phrases)


# --------------------------------------------------------------------------------------------------
# Faces: identities from packaged photographs, a landmark rig and expression templates.
# --------------------------------------------------------------------------------------------------

# scikit-image's lfw_subset() faces are 25x25; upsampled this much, HOG finds them and the
# 68-point landmark model fits them.
_LFW_UPSAMPLE = 6
# Speakers: frontal, closed-mouthed faces (expression templates read best on a neutral mouth)
# whose warped renders HOG finds in every expression with the landmark box overlapping its box.
SPEAKERS: tuple[str, ...] = (
    "grace_hopper", "astronaut", "lfw_003", "lfw_006", "lfw_008", "lfw_010", "lfw_027", "lfw_034",
    "lfw_046", "lfw_060", "lfw_062", "lfw_072", "lfw_086", "lfw_093", "lfw_095")
# Bystanders: other lfw_subset faces that pass the same check.
BYSTANDERS: tuple[str, ...] = (
    "lfw_002", "lfw_005", "lfw_011", "lfw_015", "lfw_017", "lfw_022", "lfw_029", "lfw_031",
    "lfw_037", "lfw_039", "lfw_045", "lfw_050", "lfw_061", "lfw_077", "lfw_084", "lfw_094")
# A derived identity: "<photo identity>~<k>" (e.g. "lfw_003~2") is the photo's face with its own
# face shape and appearance (`_variant`) and its own voice; it counts as the same person as its
# photo for splitting (`base_identity`).
VARIANT_SEPARATOR = "~"
_HIGH_VOICE_SHARE = 0.4  # share of identities with a high (about adult female) register


def base_identity(identity: str) -> str:
  """The photograph an identity comes from: "lfw_003~2" -> "lfw_003"."""
  return identity.split(VARIANT_SEPARATOR, 1)[0]


def _name_rng(purpose: str, identity: str) -> np.random.Generator:
  # A stable per-name stream (Python's hash() changes between processes).
  return np.random.default_rng([zlib.crc32(f"{purpose}:{identity}".encode("utf-8")), 0x1D])


def voice_of(identity: str) -> Voice:
  """The identity's neutral voice, drawn once per name from continuous ranges.

  A low register (F0 95-145 Hz, formant scale 0.94-1.06) or, for about 40% of names, a high one
  (F0 165-240 Hz, formant scale 1.10-1.22); the speaker's tempo and tilt vary by +-10%
  around the emotion profiles'. Every derived identity ("lfw_003~2") has its own.
  """
  rng = _name_rng("voice", identity)
  high = rng.random() < _HIGH_VOICE_SHARE
  f0 = np.exp(rng.uniform(*np.log((165.0, 240.0) if high else (95.0, 145.0))))
  formant = rng.uniform(*((1.10, 1.22) if high else (0.94, 1.06)))
  return Voice(float(f0), float(formant), float(rng.uniform(0.9, 1.1)),
               float(rng.uniform(0.9, 1.1)))


def _photo(identity: str) -> np.ndarray:
  """The identity's photograph, HxWx3 uint8 RGB."""
  if identity == "grace_hopper":
    with open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
      return np.asarray(PIL.Image.open(f).convert("RGB"))
  if identity == "astronaut":
    return skimage.data.astronaut()
  match = re.fullmatch(r"lfw_(\d{3})", identity)
  if match and int(match.group(1)) < 100:  # lfw_subset's first 100 images are the faces
    gray = skimage.data.lfw_subset()[int(match.group(1))].astype(np.float32) * 255.0
    big = cv2.resize(gray, None, fx=_LFW_UPSAMPLE, fy=_LFW_UPSAMPLE,
                     interpolation=cv2.INTER_CUBIC)
    return np.repeat(np.clip(big, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
  raise ValueError(f"unknown identity {identity!r}: expected grace_hopper, astronaut or "
                   f"lfw_000 .. lfw_099")


def _landmarks_68(parts: Mapping[str, list]) -> np.ndarray:
  """face_recognition's named landmark groups -> the [68, 2] (x, y) array in iBUG order."""
  top, bottom = parts["top_lip"], parts["bottom_lip"]
  # top_lip = 48..54 then 64..60; bottom_lip = 54..59, 48 then 60, 67..64.
  points = (parts["chin"] + parts["left_eyebrow"] + parts["right_eyebrow"] + parts["nose_bridge"]
            + parts["nose_tip"] + parts["left_eye"] + parts["right_eye"] + top[:7] + bottom[1:6]
            + top[7:][::-1] + bottom[8:11][::-1])
  return np.asarray(points, np.float64)


def _variant(photo: np.ndarray, landmarks: np.ndarray,
             identity: str) -> tuple[np.ndarray, np.ndarray]:
  """A derived identity's photo and landmarks: the face reshaped and its appearance changed.

  Shape (in eye distances, in the eyes' frame): face width +-8%, lower-face length +-10%, eye
  spacing +-0.05, mouth width +-12%, jaw width +-6%, brow height +-0.05; the photo is warped
  piecewise-affinely so that its landmarks move there (the image border stays). Appearance:
  gamma 0.8-1.25, contrast +-15%, brightness +-15 levels, a warmer or cooler skin tone.
  Deterministic for the name.
  """
  rng = _name_rng("face", identity)
  left, right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
  d = float(np.linalg.norm(right - left))
  centre = (left + right) / 2
  u = (right - left) / d
  v = np.array([-u[1], u[0]])
  local = np.c_[(landmarks - centre) @ u, (landmarks - centre) @ v] / d
  new = local.copy()
  new[:, 0] *= rng.uniform(0.92, 1.08)
  lower = local[:, 1] > 0
  new[lower, 1] *= rng.uniform(0.9, 1.1)
  spread = rng.uniform(-0.05, 0.05) / 2
  new[36:42, 0] -= spread
  new[42:48, 0] += spread
  mouth = new[48:68].mean(0)
  new[48:68, 0] = mouth[0] + (new[48:68, 0] - mouth[0]) * rng.uniform(0.88, 1.12)
  new[2:15, 0] *= rng.uniform(0.94, 1.06)
  new[17:27, 1] += rng.uniform(-0.05, 0.05)
  moved = centre + (new[:, :1] * u + new[:, 1:] * v) * d
  height, width = photo.shape[:2]
  border = np.array([(x, y) for x in (0, width / 2, width - 1) for y in (0, height / 2, height - 1)
                     if not (x == width / 2 and y == height / 2)], np.float64)
  src, dst = np.concatenate([landmarks, border]), np.concatenate([moved, border])
  triangles = scipy.spatial.Delaunay(src).simplices
  warped = _piecewise_affine(photo.astype(np.float32), src, dst, triangles)
  image = 255.0 * (np.clip(warped, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
  image = (image - image.mean()) * rng.uniform(0.85, 1.15) + image.mean() + rng.uniform(-15, 15)
  image = image * (1.0 + rng.uniform(-1.0, 1.0) * np.array([0.1, 0.02, -0.08]))
  return np.clip(image + 0.5, 0, 255).astype(np.uint8), moved


@functools.lru_cache(maxsize=None)
def _identity(identity: str) -> tuple[np.ndarray, np.ndarray]:
  """(photo, [68, 2] landmarks) of an identity; the largest face HOG finds in the photo, or for a
  derived identity ("lfw_003~2"), its photo's reshaped by `_variant`."""
  base = base_identity(identity)
  if base != identity:
    if not re.fullmatch(r"\d+", identity[len(base) + 1:]):
      raise ValueError(f"unknown identity {identity!r}: a derived identity is "
                       f"<identity>{VARIANT_SEPARATOR}<number>")
    photo, landmarks = _variant(*_identity(base), identity)
    photo.setflags(write=False)
    landmarks.setflags(write=False)
    return photo, landmarks
  photo = _photo(identity)
  boxes = face_recognition.face_locations(photo)
  if not boxes:
    raise ValueError(f"identity {identity!r}: no face found in its photograph")
  box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
  landmarks = _landmarks_68(face_recognition.face_landmarks(photo, [box])[0])
  photo.setflags(write=False)
  landmarks.setflags(write=False)
  return photo, landmarks


# Which side of the face each of the 68 landmarks is on (-1 image left, +1 image right, 0 midline):
# "outward" displacements are mirrored with it.
_SIDE = np.array(
    [-1] * 8 + [0] + [1] * 8  # jaw 0-16
    + [-1] * 5 + [1] * 5  # brows 17-26
    + [0] * 4 + [-1, -1, 0, 1, 1]  # nose 27-35
    + [-1] * 6 + [1] * 6  # eyes 36-47
    + [-1, -1, -1, 0, 1, 1, 1, 1, 1, 0, -1, -1]  # outer lips 48-59
    + [-1, -1, 0, 1, 1, 1, 0, -1], np.float64)  # inner lips 60-67

_GROUPS: Mapping[str, tuple[int, ...]] = types.MappingProxyType({
  "glabella": (27,), "brow_inner": (21, 22), "brow_mid": (19, 20, 23, 24),
  "brow_outer": (17, 18, 25, 26),
  "upper_lid": (37, 38, 43, 44), "lower_lid": (40, 41, 46, 47),
  "nose_wing": (31, 35), "nostrils": (32, 33, 34), "mouth_corner": (48, 54, 60, 64),
  "upper_lip_side": (49, 53), "upper_lip_mid": (50, 51, 52), "upper_lip_inner": (61, 62, 63),
  "lower_lip_side": (55, 59), "lower_lip_mid": (56, 57, 58), "lower_lip_inner": (65, 66, 67),
})

# How far each landmark follows a jaw drop (the chin moves most; the upper lip lifts a little).
_JAW_WEIGHTS: Mapping[int, float] = types.MappingProxyType({
  4: 0.15, 5: 0.4, 6: 0.7, 7: 0.9, 8: 1.0, 9: 0.9, 10: 0.7, 11: 0.4, 12: 0.15,
  48: 0.3, 54: 0.3, 60: 0.3, 64: 0.3, 55: 0.6, 56: 0.8, 57: 0.85, 58: 0.8, 59: 0.6,
  65: 0.75, 66: 0.8, 67: 0.75, 61: -0.05, 62: -0.08, 63: -0.05, 50: -0.03, 51: -0.05, 52: -0.03,
})
_JAW_DROP = 0.38  # a fully open jaw, in eye distances
_MIN_AREA_RATIO = 0.2  # a warped triangle keeps at least this share of its area (no folds)


@dataclasses.dataclass(frozen=True)
class Expression:
  """Moves of landmark groups, (outward, down) in eye distances, and a resting jaw opening."""
  moves: Mapping[str, tuple[float, float]]
  jaw: float = 0.0  # fraction of a fully open jaw held throughout


# Geometric caricatures of the prototypes of Ekman & Friesen's Facial Action Coding System
# (e.g. surprise: brows raised AU1+2, upper lids raised AU5, jaw dropped AU26). Moves stay far
# below 1.5 eye distances, beyond which the rig's triangles fold; `_fold_free_scale` checks the
# rest per identity.
EXPRESSIONS: Mapping[str, Expression] = types.MappingProxyType({
  "angry": Expression({  # AU4 brows lowered and drawn together, AU7 lids tight, AU23 lips pressed
      "glabella": (0.0, 0.07), "brow_inner": (-0.06, 0.13), "brow_mid": (-0.04, 0.1),
      "brow_outer": (0.0, 0.04), "upper_lid": (0.0, 0.025), "lower_lid": (0.0, -0.02),
      "nose_wing": (0.03, -0.02), "mouth_corner": (-0.04, 0.03), "upper_lip_side": (-0.02, 0.03),
      "upper_lip_mid": (0.0, 0.02), "lower_lip_side": (-0.02, -0.02),
      "lower_lip_mid": (0.0, -0.03)}),
  "disgust": Expression({  # AU9 nose wrinkled, AU10 upper lip raised, AU4 brows lowered
      "glabella": (0.0, 0.04), "brow_inner": (-0.04, 0.09), "brow_mid": (0.0, 0.06),
      "lower_lid": (0.0, -0.03),
      "nose_wing": (0.03, -0.06), "nostrils": (0.0, -0.035), "upper_lip_side": (0.02, -0.09),
      "upper_lip_mid": (0.0, -0.1), "upper_lip_inner": (0.0, -0.1), "mouth_corner": (0.0, 0.03),
      "lower_lip_mid": (0.0, -0.01)}, jaw=0.1),
  "fear": Expression({  # AU1+2+4 brows raised and drawn together, AU5 lids up, AU20 lips stretched
      "brow_inner": (-0.04, -0.15), "brow_mid": (0.0, -0.12), "brow_outer": (0.0, -0.07),
      "upper_lid": (0.0, -0.06), "lower_lid": (0.0, 0.02), "mouth_corner": (0.12, 0.05),
      "upper_lip_side": (0.06, 0.02), "lower_lip_side": (0.06, 0.05)}, jaw=0.3),
  "happy": Expression({  # AU6 cheeks raised, AU12 lip corners pulled up
      "brow_mid": (0.0, -0.02), "lower_lid": (0.0, -0.03), "mouth_corner": (0.12, -0.12),
      "upper_lip_side": (0.06, -0.09), "upper_lip_mid": (0.0, -0.03),
      "upper_lip_inner": (0.0, -0.02), "lower_lip_side": (0.07, -0.07)}, jaw=0.15),
  "sad": Expression({  # AU1+4 inner brows raised, AU15 lip corners down, AU17 chin raised
      "brow_inner": (-0.03, -0.13), "brow_mid": (0.0, -0.03), "brow_outer": (0.0, 0.05),
      "upper_lid": (0.0, 0.03), "mouth_corner": (-0.02, 0.12), "upper_lip_side": (0.0, 0.06),
      "lower_lip_side": (0.0, 0.07), "lower_lip_mid": (0.0, -0.03),
      "lower_lip_inner": (0.0, -0.01)}),
  "surprise": Expression({  # AU1+2 brows raised, AU5 upper lids raised, AU26 jaw dropped
      "brow_inner": (0.0, -0.2), "brow_mid": (0.0, -0.22), "brow_outer": (0.0, -0.18),
      "upper_lid": (0.0, -0.07), "lower_lid": (0.0, 0.03), "mouth_corner": (-0.04, 0.06),
      "upper_lip_side": (-0.02, 0.03)},
      jaw=0.6),
  "neutral": Expression({}),
})


# The speaker's expression is the template above times this gain (times 0.8-1.2 per clip): at the
# 64-pixel face crops the teacher sees, an eye distance is about 20 pixels, and the templates'
# moves of 0.05-0.2 eye distances were smaller than the differences between faces. The fold guard
# still lowers it wherever it would fold a triangle of a rig.
EXPRESSION_GAIN = 1.5


@dataclasses.dataclass(frozen=True)
class _Rig:
  """An identity cut out in a canonical pose (eyes level) at one size, ready to warp."""
  rgba: np.ndarray  # float32 [h, w, 4]: RGB 0-255 and alpha 0-1
  points: np.ndarray  # float64 [n, 2]: the 68 landmarks, 4 cheek points, fixed rig points (x, y)
  triangles: np.ndarray  # int32 [m, 3]: Delaunay triangles of `points`
  eye_distance: float  # pixels
  pivot: np.ndarray  # (x, y) pixels: the head's centre of rotation and placement

  def expression_offsets(self, expression: Expression) -> np.ndarray:
    """Displacements [n, 2] in pixels of `expression` at intensity 1 (its jaw not included)."""
    offsets = np.zeros_like(self.points)
    for group, (outward, down) in expression.moves.items():
      for i in _GROUPS[group]:
        offsets[i] += (outward * _SIDE[i], down)
    return self._with_cheeks(offsets) * self.eye_distance

  def jaw_offsets(self) -> np.ndarray:
    """Displacements [n, 2] in pixels of a fully open jaw."""
    offsets = np.zeros_like(self.points)
    for i, weight in _JAW_WEIGHTS.items():
      offsets[i, 1] = weight * _JAW_DROP
    for i in (48, 54, 60, 64):  # an opening mouth also narrows a little
      offsets[i, 0] = -0.03 * _SIDE[i]
    return self._with_cheeks(offsets) * self.eye_distance

  @staticmethod
  def _with_cheeks(offsets: np.ndarray) -> np.ndarray:
    # Cheek points (68-71) follow the mouth corner on their side halfway.
    offsets[68:70] = 0.5 * offsets[48]
    offsets[70:72] = 0.5 * offsets[54]
    return offsets


def _signed_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
  return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


def _fold_free_scale(rig: _Rig, expression: np.ndarray, jaws: Sequence[np.ndarray],
                     steps: int = 10) -> float:
  """The largest s in [0, 1] (by bisection) such that `rig.points + s * expression + jaw` keeps
  every triangle unfolded for each jaw offset in `jaws`."""
  rest = _signed_areas(rig.points, rig.triangles)

  def unfolded(scale: float) -> bool:
    return all((_signed_areas(rig.points + scale * expression + jaw, rig.triangles) / rest).min()
               >= _MIN_AREA_RATIO for jaw in jaws)

  if unfolded(1.0):
    return 1.0
  lo, hi = 0.0, 1.0
  for _ in range(steps):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if unfolded(mid) else (lo, mid)
  return lo


# The cut-out spans these eye distances around the eye midpoint: (left, right, top, bottom).
_PATCH = (-2.0, 2.0, -2.1, 3.1)


@functools.lru_cache(maxsize=64)
def _rig(identity: str, eye_distance: int) -> _Rig:
  """The identity's photo rotated to level eyes, scaled to `eye_distance` pixels, cut out."""
  photo, landmarks = _identity(identity)
  eyes = landmarks[42:48].mean(0) - landmarks[36:42].mean(0)
  scale = eye_distance / np.linalg.norm(eyes)
  angle = np.degrees(np.arctan2(eyes[1], eyes[0]))
  image = photo
  if scale < 1:  # area averaging first: warpAffine alone would alias a large downscale
    image = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    landmarks = (landmarks + 0.5) * scale - 0.5  # resize maps pixel centres
    scale = 1.0
  centre = (landmarks[36:42].mean(0) + landmarks[42:48].mean(0)) / 2
  d = float(eye_distance)
  width, height = int(round((_PATCH[1] - _PATCH[0]) * d)), int(round((_PATCH[3] - _PATCH[2]) * d))
  origin = np.array([-_PATCH[0] * d, -_PATCH[2] * d])
  matrix = cv2.getRotationMatrix2D(tuple(centre), angle, scale)
  matrix[:, 2] += origin - centre
  rgb = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
  covered = cv2.warpAffine(np.ones(image.shape[:2], np.float32), matrix, (width, height),
                           flags=cv2.INTER_LINEAR, borderValue=0.0)
  points = np.c_[landmarks, np.ones(len(landmarks))] @ matrix.T
  # A closed mouth has coincident inner-lip points; keep them apart so triangulation sees them.
  for upper, lower in ((61, 67), (62, 66), (63, 65)):
    points[lower, 1] = max(points[lower, 1], points[upper, 1] + 0.02 * d)

  unit = (points - origin) / d  # eye midpoint at 0, eye distance 1
  cheeks = np.array([(unit[2] + unit[31]) / 2, (unit[4] + unit[48]) / 2,
                     (unit[14] + unit[35]) / 2, (unit[12] + unit[54]) / 2])
  brow_top = unit[17:27, 1].min()
  forehead = np.array([[x, brow_top - 0.45] for x in (-0.9, -0.45, 0.0, 0.45, 0.9)])
  # A ring of fixed points around the face, far enough below the chin for a fully open jaw.
  top = brow_top - 0.9
  bottom = min(unit[8, 1] + _JAW_DROP + 0.3, _PATCH[3] - 0.15)
  half_width = min(np.abs(unit[:17, 0]).max() + 0.4, _PATCH[1] - 0.15)
  ring_angle = np.linspace(0, 2 * np.pi, 16, endpoint=False)
  ring = np.c_[half_width * np.cos(ring_angle),
               (top + bottom) / 2 + (bottom - top) / 2 * np.sin(ring_angle)]
  xs, ys = np.linspace(_PATCH[0], _PATCH[1], 4), np.linspace(_PATCH[2], _PATCH[3], 4)
  border = np.array([(x, y) for x in xs for y in ys if x in xs[[0, -1]] or y in ys[[0, -1]]])
  extra = np.concatenate([cheeks, forehead, ring, border]) * d + origin
  points = np.concatenate([points, extra])
  triangles = scipy.spatial.Delaunay(points).simplices.astype(np.int32)

  # Alpha: the head (an ellipse around the face) and a neck that fades out, feathered, and only
  # where the photograph has pixels.
  yy, xx = (np.mgrid[0:height, 0:width] - origin[::-1, None, None]) / d
  head = ((xx / 1.25) ** 2 + ((yy - 0.45) / 1.6) ** 2 <= 1.0).astype(np.float32)
  neck = ((np.abs(xx) <= 0.6) & (yy >= 1.2)).astype(np.float32) * np.clip((3.0 - yy) / 0.8, 0, 1)
  alpha = cv2.GaussianBlur(np.maximum(head, neck), (0, 0), 0.08 * d)
  covered = cv2.GaussianBlur(cv2.erode(covered, np.ones((3, 3), np.uint8)), (0, 0), 1.0)
  rgba = np.dstack([rgb, alpha * covered]).astype(np.float32)
  rgba.setflags(write=False)
  return _Rig(rgba, points, triangles, d, origin + np.array([0.0, 0.8 * d]))


def _piecewise_affine(image: np.ndarray, src: np.ndarray, dst: np.ndarray,
                      triangles: np.ndarray) -> np.ndarray:
  """Warps `image` so that each point src[i] moves to dst[i], one affine map per triangle.

  The output has the input's size; pixels in no destination triangle keep the input pixel.
  """
  height, width = image.shape[:2]
  label = np.full((height, width), -1, np.int32)
  fixed = np.round(dst * 16).astype(np.int32)  # 4 fractional bits for fillConvexPoly's `shift`
  for t, tri in enumerate(triangles):
    cv2.fillConvexPoly(label, fixed[tri], t, lineType=cv2.LINE_8, shift=4)
  # Per triangle, the affine map from destination (x, y, 1) to source (x, y).
  corners = np.concatenate([dst[triangles], np.ones((len(triangles), 3, 1))], axis=2)
  coef = np.linalg.solve(corners, src[triangles]).astype(np.float32)  # [m, 3, 2]
  coef = np.concatenate([coef, np.array([[[1, 0], [0, 1], [0, 0]]], np.float32)])  # label -1
  c = coef[label]
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  map_x = xs * c[..., 0, 0] + ys * c[..., 1, 0] + c[..., 2, 0]
  map_y = xs * c[..., 0, 1] + ys * c[..., 1, 1] + c[..., 2, 1]
  return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


_MOUTH_COLOUR = np.array([70.0, 25.0, 30.0], np.float32)


def _render_pose(rig: _Rig, offsets: np.ndarray) -> np.ndarray:
  """The rig warped by `offsets`, premultiplied RGBA float32, with a dark open mouth."""
  dst = rig.points + offsets
  warped = _piecewise_affine(rig.rgba, rig.points, dst, rig.triangles)
  rgb, alpha = warped[..., :3], warped[..., 3:]
  # The mouth cavity darkens as the lips part beyond the photograph's own gap (so teeth in a
  # smiling photo stay visible while the mouth is at rest).
  opened = (dst[66, 1] - dst[62, 1]) - (rig.points[66, 1] - rig.points[62, 1])
  darkness = float(np.clip(opened / (0.08 * rig.eye_distance), 0.0, 0.9))
  if darkness > 0:
    mouth = np.zeros(alpha.shape[:2], np.float32)
    cv2.fillPoly(mouth, [np.round(dst[60:68] * 16).astype(np.int32)], darkness,
                 lineType=cv2.LINE_AA, shift=4)
    mouth = mouth[..., None]
    rgb = rgb * (1 - mouth) + _MOUTH_COLOUR * mouth
  return np.concatenate([rgb * alpha, alpha], axis=2)


# --------------------------------------------------------------------------------------------------
# Scenes: background, head motion, compositing, one clip.
# --------------------------------------------------------------------------------------------------

_JAW_LEVELS = 16  # jaw openings are rendered at this many levels (about 1 px apart at 320x240)
_SPEECH_JAW = 0.85  # share of the jaw's remaining travel used by the widest vowel


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
  """A plain but not flat backdrop: a two-colour gradient, soft blotches and fine grain."""
  colours = rng.uniform(60, 200, size=(2, 1)) + rng.normal(0, 18, size=(2, 3))  # muted tints
  angle = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
  ramp = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
  image = colours[0] * (1 - ramp) + colours[1] * ramp
  grid = (height // 40 + 2, width // 40 + 2)
  # Blotches of mostly light and shade, a little tint.
  blotches = rng.normal(0, 10, size=grid + (1,)) + rng.normal(0, 3, size=grid + (3,))
  image += cv2.resize(blotches.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
  image += rng.normal(0, 3, size=image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _smooth_motion(n_frames: int, fps: float, amplitude: float,
                   rng: np.random.Generator) -> np.ndarray:
  """A slow random wobble within +-amplitude: three sinusoids of 0.1-0.5 Hz."""
  t = np.arange(n_frames) / fps
  freqs = rng.uniform(0.1, 0.5, 3)
  phases = rng.uniform(0, 2 * np.pi, 3)
  weights = rng.uniform(0.3, 1.0, 3)
  wave = (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
  return amplitude * wave / weights.sum()


def _frame_values(envelope: np.ndarray, sample_rate: int, n_frames: int, fps: float) -> np.ndarray:
  """Mean of a per-sample signal over each video frame's interval, centred on the frame time."""
  edges = np.round((np.arange(n_frames + 1) - 0.5) / fps * sample_rate).astype(np.int64)
  edges = np.clip(edges, 0, envelope.size)
  cumsum = np.concatenate([[0.0], np.cumsum(envelope, dtype=np.float64)])
  return (cumsum[edges[1:]] - cumsum[edges[:-1]]) / np.maximum(edges[1:] - edges[:-1], 1)


@dataclasses.dataclass
class _Actor:
  """One face in a clip: the poses it takes and where it is in every frame."""
  poses: dict[int, np.ndarray]  # jaw level -> premultiplied RGBA render, cropped to `crop`
  crop: np.ndarray  # (x, y) in patch pixels of the poses' top-left corner
  levels: np.ndarray  # [n_frames] jaw level per frame
  matrices: np.ndarray  # [n_frames, 2, 3] patch -> frame affine maps
  landmarks: dict[int, np.ndarray]  # jaw level -> [68, 2] landmarks in patch pixels

  def boxes(self, height: int, width: int) -> list[list[int] | None]:
    """[top, right, bottom, left] of the warped landmarks per frame; None when out of frame."""
    out = []
    for level, matrix in zip(self.levels, self.matrices):
      points = self.landmarks[int(level)] @ matrix[:, :2].T + matrix[:, 2]
      left, top = np.floor(points.min(0)).astype(int)
      right, bottom = np.ceil(points.max(0)).astype(int)
      top, bottom = max(top, 0), min(bottom, height)
      left, right = max(left, 0), min(right, width)
      out.append([int(top), int(right), int(bottom), int(left)]
                 if bottom > top and right > left else None)
    return out

  def jaw_openings(self) -> list[float]:
    """The rendered jaw opening per frame, as a share of a fully open jaw."""
    return [round(float(level) / (_JAW_LEVELS - 1), 4) for level in self.levels]

  def draw(self, frame: np.ndarray, index: int) -> None:
    """Composites this actor's pose of frame `index` onto `frame` (uint8, in place)."""
    pose = self.poses[int(self.levels[index])]
    matrix = self.matrices[index].copy()
    matrix[:, 2] += matrix[:, :2] @ self.crop
    h, w = pose.shape[:2]
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
    corners = corners @ matrix[:, :2].T + matrix[:, 2]
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1 = min(int(np.ceil(corners[:, 0].max())), frame.shape[1])
    y1 = min(int(np.ceil(corners[:, 1].max())), frame.shape[0])
    if x1 <= x0 or y1 <= y0:
      return
    matrix[:, 2] -= (x0, y0)
    layer = cv2.warpAffine(pose, matrix, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    roi = roi * (1 - layer[..., 3:]) + layer[..., :3]
    frame[y0:y1, x0:x1] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)


def _actor(identity: str, expression: Expression, intensity: float, jaw: np.ndarray,
           eye_distance: float, centre: tuple[float, float], n_frames: int, fps: float,
           shift_px: float, rng: np.random.Generator) -> tuple[_Actor, float]:
  """Builds a face: expression + per-frame jaw opening (in [0, 1]) + slow head motion.

  Returns the actor and the expression intensity actually used (lowered where the full one would
  fold a triangle of this identity's rig).
  """
  rig = _rig(identity, int(round(eye_distance)))
  expression_offsets = rig.expression_offsets(expression)
  jaw_offsets = rig.jaw_offsets()
  levels = np.round(np.clip(jaw, 0.0, 1.0) * (_JAW_LEVELS - 1)).astype(np.int64)
  used = sorted(set(levels.tolist()))
  intensity *= _fold_free_scale(rig, intensity * expression_offsets,
                                [level / (_JAW_LEVELS - 1) * jaw_offsets
                                 for level in (used[0], used[-1])])
  poses, landmarks = {}, {}
  for level in used:
    offsets = intensity * expression_offsets + level / (_JAW_LEVELS - 1) * jaw_offsets
    poses[level] = _render_pose(rig, offsets)
    landmarks[level] = (rig.points + offsets)[:68]
  # Only the part any pose covers is warped per frame.
  covered = np.argwhere(np.max([p[..., 3] for p in poses.values()], axis=0) > 1.0 / 255)
  (y0, x0), (y1, x1) = covered.min(0), covered.max(0) + 1
  poses = {level: np.ascontiguousarray(p[y0:y1, x0:x1]) for level, p in poses.items()}
  dx = _smooth_motion(n_frames, fps, shift_px, rng)
  dy = _smooth_motion(n_frames, fps, 0.75 * shift_px, rng)
  roll = _smooth_motion(n_frames, fps, 3.0, rng)  # degrees
  matrices = np.empty((n_frames, 2, 3))
  for i in range(n_frames):
    matrix = cv2.getRotationMatrix2D(tuple(rig.pivot), roll[i], 1.0)
    matrix[:, 2] += (centre[0] + dx[i] - rig.pivot[0], centre[1] + dy[i] - rig.pivot[1])
    matrices[i] = matrix
  return _Actor(poses, np.array([x0, y0], np.float64), levels, matrices, landmarks), intensity


def _jaw_track(rest: float, mouth: np.ndarray) -> np.ndarray:
  """Jaw opening per frame: the expression's rest plus speech within the travel left."""
  return rest + (1.0 - rest) * _SPEECH_JAW * mouth


def _check_emotion(path: str, role: str, name: str) -> None:
  if name not in emotions.INDEX:
    raise ValueError(f"{path}: unknown {role} emotion {name!r}; expected one of "
                     f"{', '.join(emotions.EMOTIONS)}")


def make_clip(path: PathLike, face_emotion: str, voice_emotion: str, speaker: str,
              bystander: str | None = None, duration_s: float = 3.0, width: int = 320,
              height: int = 240, fps: float = 25.0, seed: int = 0) -> dict[str, Any]:
  """Writes one talking-face MP4 (H.264 + AAC) and returns its ground truth.

  `speaker` and `bystander` are identities (`SPEAKERS`, `BYSTANDERS`, or any `lfw_NNN`). The
  speaker's face shows `face_emotion` and their voice `voice_emotion`; their jaw follows the
  voice. A bystander, smaller and to one side, shows a random emotion and either keeps their mouth
  closed or moves it on a schedule of their own. Deterministic for a seed.

  Ground truth keys: clip_id (the file's stem), path, face_emotion, voice_emotion, congruent,
  speaker_identity, bystander_identity (or None), bystander_emotion (or None), face_intensity,
  fps, width, height, duration_s, num_frames, sample_rate, num_samples, text, seed, and per video
  frame: speaker_boxes / bystander_boxes ([top, right, bottom, left] pixels of the warped 68
  landmarks, None where not visible) and speaker_mouth / bystander_mouth (jaw opening as a share
  of a fully open jaw, None without a bystander).
  """
  path = str(path)
  _check_emotion(path, "face", face_emotion)
  _check_emotion(path, "voice", voice_emotion)
  if bystander == speaker:
    raise ValueError(f"{path}: the bystander must differ from the speaker ({speaker!r})")
  if duration_s <= 0 or fps <= 0:
    raise ValueError(f"{path}: duration_s and fps must be positive, got {duration_s}, {fps}")
  if width < 64 or height < 64 or width % 2 or height % 2:
    raise ValueError(f"{path}: width and height must be even and >= 64, got {width}x{height}")
  try:
    _identity(speaker)
    if bystander is not None:
      _identity(bystander)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None

  streams = np.random.SeedSequence(seed).spawn(4)
  scene_rng, speaker_rng, bystander_rng = (np.random.default_rng(s) for s in streams[:3])
  n_frames = max(1, int(round(duration_s * fps)))
  speech = synthesize_speech(voice_emotion, duration_s, voice_of(speaker),
                             seed=int(streams[3].generate_state(1)[0]))
  speech_mouth = _frame_values(speech.envelope, speech.sample_rate, n_frames, fps)

  background = _background(height, width, scene_rng)
  unit = height / 240.0  # sizes and motion scale with the frame height
  side = 1 if scene_rng.random() < 0.5 else -1  # the speaker's side when there is a bystander
  offset = side * 0.17 if bystander else scene_rng.uniform(-0.08, 0.08)
  expression = EXPRESSIONS[face_emotion]
  speaker_actor, intensity = _actor(
      speaker, expression, EXPRESSION_GAIN * scene_rng.uniform(0.8, 1.2),
      _jaw_track(expression.jaw, speech_mouth),
      38.0 * unit * scene_rng.uniform(0.92, 1.08), ((0.5 + offset) * width, 0.5 * height),
      n_frames, fps, 4.0 * unit, speaker_rng)
  actors = [speaker_actor]
  bystander_emotion, bystander_actor = None, None
  if bystander is not None:
    bystander_emotion = emotions.EMOTIONS[int(bystander_rng.integers(emotions.NUM_CLASSES))]
    expression = EXPRESSIONS[bystander_emotion]
    mouth = np.zeros(n_frames)  # lips at rest ...
    if bystander_rng.random() < 0.5:  # ... or silent talking, independent of the voice
      schedule = mouth_schedule(duration_s, int(bystander_rng.integers(2 ** 31)))
      mouth = _frame_values(schedule, SAMPLE_RATE, n_frames, fps)
    bystander_actor, _ = _actor(
        bystander, expression, bystander_rng.uniform(0.7, 1.1), _jaw_track(expression.jaw, mouth),
        24.0 * unit * bystander_rng.uniform(0.92, 1.08),
        ((0.5 - side * 0.26) * width, 0.46 * height), n_frames, fps, 3.0 * unit, bystander_rng)
    actors.insert(0, bystander_actor)  # drawn first: the bystander stands behind

  def frames() -> Iterator[np.ndarray]:
    for i in range(n_frames):
      frame = background.copy()
      for actor in actors:
        actor.draw(frame, i)
      yield frame

  media.write_video(path, frames(), fps, speech.audio, speech.sample_rate)
  return {
      "clip_id": pathlib.Path(path).stem,
      "path": path,
      "face_emotion": face_emotion,
      "voice_emotion": voice_emotion,
      "congruent": face_emotion == voice_emotion,
      "speaker_identity": speaker,
      "bystander_identity": bystander,
      "bystander_emotion": bystander_emotion,
      "face_intensity": round(intensity, 4),
      "fps": fps,
      "width": width,
      "height": height,
      "duration_s": duration_s,
      "num_frames": n_frames,
      "sample_rate": speech.sample_rate,
      "num_samples": int(speech.audio.size),
      "text": speech.text,
      "seed": seed,
      "speaker_boxes": speaker_actor.boxes(height, width),
      "bystander_boxes": (bystander_actor.boxes(height, width) if bystander_actor
                          else [None] * n_frames),
      "speaker_mouth": speaker_actor.jaw_openings(),
      "bystander_mouth": bystander_actor.jaw_openings() if bystander_actor else None,
  }


# --------------------------------------------------------------------------------------------------
# The corpus: a plan of clips, speaker-independent splits, MELD's CSVs and the ground truth.
# --------------------------------------------------------------------------------------------------

_CSV_COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                "Utterance_ID", "Season", "Episode", "StartTime", "EndTime")
_MELD_NAME: Mapping[str, str] = types.MappingProxyType({v: k for k, v in emotions.MELD.items()})
_GAP_S = 0.4  # silence between consecutive utterances of a dialogue on the CSV's timeline


@dataclasses.dataclass(frozen=True)
class _Planned:
  split: meld.MeldSplit
  dialogue: int
  utterance: int
  speaker: str
  bystander: str | None
  face_emotion: str
  voice_emotion: str
  seed: int


def _sentiment(emotion: str) -> str:
  """MELD's sentiment from the class's valence (surprise counts as positive)."""
  valence = emotions.VALENCE_AROUSAL[emotion][0]
  return "positive" if valence > 0.2 else ("negative" if valence < -0.2 else "neutral")


def _timestamp(seconds: float) -> str:
  millis = int(round(seconds * 1000))
  return (f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d},"
          f"{millis % 1000:03d}")


def _identity_splits(names: Sequence[str], fractions: Sequence[float],
                     seed: int) -> dict[str, str]:
  """identity -> train | validation | test (data_prep's rule), by photograph: an identity and all
  those derived from its photo ("lfw_003", "lfw_003~1", ...) share one split."""
  specs = [ClipSpec(clip_id=name, corpus="demo", path=None, speaker_id=base_identity(name))
           for name in names]
  return {s.clip_id: s.split for s in splits.assign_splits(specs, fractions, seed)}


def with_variants(identities: Sequence[str], variants: int) -> tuple[str, ...]:
  """Each identity and `variants - 1` identities derived from its photo ("lfw_003~1", ...)."""
  if variants < 1:
    raise ValueError(f"variants must be >= 1, got {variants}")
  return tuple(name if k == 0 else f"{name}{VARIANT_SEPARATOR}{k}"
               for name in identities for k in range(variants))


def _derangement(labels: Sequence[str], rng: np.random.Generator) -> list[str]:
  """A random reordering of `labels` in which no position keeps its label.

  Reusing the faces' labels as the voices keeps the voices as balanced as the faces. A position
  that no swap can fix (e.g. a single label) gets a random other class instead.
  """
  out = [labels[k] for k in rng.permutation(len(labels))]
  for i in range(len(out)):
    if out[i] != labels[i]:
      continue
    for j in rng.permutation(len(out)):
      if out[j] != labels[i] and out[i] != labels[j]:
        out[i], out[j] = out[j], out[i]
        break
    else:
      others = [e for e in emotions.EMOTIONS if e != labels[i]]
      out[i] = others[int(rng.integers(len(others)))]
  return out


def _plan(n_clips: int, seed: int, incongruent_fraction: float, bystander_fraction: float,
          fractions: Sequence[float], speakers: Sequence[str],
          bystanders: Sequence[str] | None) -> list[_Planned]:
  """Which clip shows whom with which emotions, balanced per split; deterministic for a seed.

  `bystanders` None: the bystanders are the speakers themselves (another speaker of the clip's
  split). Splits are by photograph over speakers and bystanders together, so nobody is seen in
  two splits in either role.
  """
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
  by_name = {s.split: s for s in meld.MELD_SPLITS}
  needed = sum(f > 0 for f in fractions)  # identities needed to give each split its own
  shared = bystanders is None
  bystanders = list(speakers) if shared else list(bystanders)
  held_out = len({base_identity(s) for s in speakers}) >= needed
  if held_out:
    speaker_split = _identity_splits(speakers, fractions, seed)
    members = {split: [s for s in speakers if speaker_split[s] == split] for split in by_name}
    # Interleave speakers by their rank within their split, so that any prefix of the clip list
    # (a small corpus) keeps the splits' proportions.
    order = sorted(speakers, key=lambda s: ((members[speaker_split[s]].index(s) + 0.5)
                                            / len(members[speaker_split[s]]), s))
    clip_speakers = [order[i % len(order)] for i in range(n_clips)]
    clip_splits = [speaker_split[s] for s in clip_speakers]
  else:  # too few identities to hold any out: split the clips instead
    bounds = np.round(np.cumsum(fractions) * n_clips).astype(int)
    clip_splits = [splits.SPLITS[int(np.searchsorted(bounds, i, side="right"))]
                   for i in range(n_clips)]
    clip_speakers = [speakers[i % len(speakers)] for i in range(n_clips)]
  if held_out and shared:
    bystander_split = speaker_split
  elif held_out and len({base_identity(b) for b in bystanders}) >= needed:
    bystander_split = _identity_splits(bystanders, fractions, seed + 1)
  else:
    bystander_split = {b: None for b in bystanders}

  planned = []
  for split in splits.SPLITS:
    index = [i for i, s in enumerate(clip_splits) if s == split]
    m = len(index)
    if not m:
      continue
    start = int(rng.integers(emotions.NUM_CLASSES))  # so that small splits vary their classes
    faces = [emotions.EMOTIONS[(start + k) % emotions.NUM_CLASSES] for k in rng.permutation(m)]
    voices = list(faces)
    incongruent = rng.permutation(m)[:int(round(incongruent_fraction * m))]
    for position, voice in zip(incongruent, _derangement([faces[i] for i in incongruent], rng)):
      voices[position] = voice
    pool = [b for b in bystanders if bystander_split[b] in (split, None)]
    pool = [pool[k] for k in rng.permutation(len(pool))]
    with_bystander = set(rng.permutation(m)[:int(round(bystander_fraction * m))].tolist())
    dialogue, utterance, length = 0, 0, int(rng.integers(1, 5))
    for k, i in enumerate(index):
      bystander = None
      if k in with_bystander and pool:
        candidates = [b for b in pool if base_identity(b) != base_identity(clip_speakers[i])]
        bystander = candidates[k % len(candidates)] if candidates else None
      planned.append(_Planned(by_name[split], dialogue, utterance, clip_speakers[i], bystander,
                              faces[k], voices[k], int(rng.integers(2 ** 31))))
      utterance += 1
      if utterance == length:
        dialogue, utterance, length = dialogue + 1, 0, int(rng.integers(1, 5))
  return planned


def make_demo_corpus(out_dir: PathLike, n_clips: int = 105, seed: int = 0,
                     incongruent_fraction: float = 0.35, bystander_fraction: float = 0.35,
                     duration_s: float = 3.0, width: int = 320, height: int = 240,
                     fps: float = 25.0, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                     speakers: Sequence[str] = SPEAKERS + BYSTANDERS,
                     bystanders: Sequence[str] | None = None, variants: int = 3,
                     progress: bool = True) -> list[dict[str, Any]]:
  """Writes the demo corpus in MELD's layout under `out_dir` and returns its ground truth.

  Face emotions are balanced within each split; `incongruent_fraction` of each split's clips get
  a different voice emotion (the voices stay as balanced as the faces) and `bystander_fraction` a
  bystander. Each of `speakers` comes with `variants - 1` identities derived from its photo
  (`with_variants`: own face shape, appearance and voice). `bystanders` None: a clip's bystander
  is another speaker of its split (of another photo); else a list of identities that never speak.
  Speakers, and bystanders, are split train / dev / test by photograph (`fractions`) when there
  are enough of them; otherwise the clips are split. Each ground-truth record is `make_clip`'s, with
  `clip_id` "<csv split>/dia{D}_utt{U}" (as the MELD reader names it), `split` (train |
  validation | test) and `path` relative to `out_dir`. Deterministic for a seed.
  """
  if n_clips < 1:
    raise ValueError(f"n_clips must be >= 1, got {n_clips}")
  for name, value in (("incongruent_fraction", incongruent_fraction),
                      ("bystander_fraction", bystander_fraction)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {value}")
  if (len(fractions) != 3 or any(f < 0 for f in fractions)
      or not np.isclose(sum(fractions), 1.0)):
    raise ValueError(f"fractions must be three non-negative numbers (train, validation, test) "
                     f"summing to 1, got {tuple(fractions)}")
  if not speakers:
    raise ValueError("at least one speaker identity is needed")
  speakers = with_variants(speakers, variants)
  if bystanders is not None:
    overlap = sorted({base_identity(b) for b in bystanders}
                     & {base_identity(s) for s in speakers})
    if overlap:
      raise ValueError(f"identities both speaker and bystander: {', '.join(overlap)}")
  for identity in list(speakers) + list(bystanders or ()):
    _identity(identity)  # fails fast, naming a bad identity
  planned = _plan(n_clips, seed, incongruent_fraction, bystander_fraction, fractions, speakers,
                  bystanders)

  root = pathlib.Path(out_dir)
  records = []
  for item in tqdm.tqdm(planned, desc="demo corpus", unit="clip", disable=not progress):
    name = meld.media_name(item.dialogue, item.utterance)
    relative = pathlib.PurePosixPath(item.split.media_folder, name)
    (root / item.split.media_folder).mkdir(parents=True, exist_ok=True)
    record = make_clip(root / relative, item.face_emotion, item.voice_emotion, item.speaker,
                       item.bystander, duration_s, width, height, fps, item.seed)
    record.update(clip_id=f"{item.split.name}/{name.removesuffix('.mp4')}",
                  split=item.split.split, path=str(relative))
    records.append(record)

  for split in meld.MELD_SPLITS:
    rows = [(item, record) for item, record in zip(planned, records) if item.split == split]
    with open(root / split.csv_name, "w", encoding="utf-8", newline="") as f:
      writer = csv.writer(f, lineterminator="\r\n")  # MELD's CSVs use CRLF
      writer.writerow(_CSV_COLUMNS)
      for number, (item, record) in enumerate(rows, start=1):
        start = item.utterance * (duration_s + _GAP_S)
        writer.writerow([number, record["text"], item.speaker, _MELD_NAME[item.voice_emotion],
                         _sentiment(item.voice_emotion), item.dialogue, item.utterance, 1, 1,
                         _timestamp(start), _timestamp(start + duration_s)])
  with open(root / demo.GROUND_TRUTH, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return records



# --------------------------------------------------------------------------------------------------
# Composites: a still face from a packaged photograph pasted into a real clip as a bystander.
# --------------------------------------------------------------------------------------------------

_PATCH_MARGIN = 0.12  # border kept around the face box, in face heights
# Generated scenes with a bystander that speaker-isolation tests and benchmarks share:
# (face emotion, voice emotion, speaker, bystander, seed) for `make_clip`; bystanders of several
# identities and emotions, congruent and incongruent voices.
ISOLATION_SCENES: tuple[tuple[str, str, str, str, int], ...] = (
    ("happy", "happy", "grace_hopper", "lfw_002", 11),
    ("sad", "angry", "astronaut", "lfw_011", 12),
    ("surprise", "fear", "lfw_003", "lfw_029", 13),
    ("neutral", "sad", "lfw_027", "lfw_045", 14),
)


@functools.lru_cache(maxsize=None)
def _identity_face_box(identity: str) -> tuple[int, int, int, int]:
  """The largest face HOG finds in an identity's photograph (the one `_identity` rigs)."""
  return _largest_face(_identity(identity)[0], f"identity {identity!r}")


def _largest_face(photo: np.ndarray, name: str) -> tuple[int, int, int, int]:
  boxes = face_recognition.face_locations(photo)
  if not boxes:
    raise ValueError(f"{name}: no face found in its photograph")
  return max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))


def face_patch(identity_or_photo: str | np.ndarray, face_px: int,
               margin: float = _PATCH_MARGIN) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """A photograph cropped around its largest face, scaled so the face box is `face_px` tall.

  `identity_or_photo` is an identity (`SPEAKERS`, `BYSTANDERS`, any `lfw_NNN`) or an HxWx3 uint8
  RGB photograph. The crop keeps `margin` face heights around HOG's face box (less where the
  photograph ends). Returns the patch (uint8 RGB) and the face box inside it, [top, right, bottom,
  left] pixels.
  """
  if face_px < 1:
    raise ValueError(f"face_px must be >= 1, got {face_px}")
  if isinstance(identity_or_photo, str):
    photo = _identity(identity_or_photo)[0]
    top, right, bottom, left = _identity_face_box(identity_or_photo)
  else:
    photo = np.asarray(identity_or_photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
      raise ValueError(f"face_patch expects an HxWx3 uint8 RGB photo, got {photo.shape} "
                       f"{photo.dtype}")
    top, right, bottom, left = _largest_face(photo, "photo")
  pad = margin * (bottom - top)
  y0, x0 = int(max(0, top - pad)), int(max(0, left - pad))
  patch = photo[y0:int(bottom + pad), x0:int(right + pad)]
  scale = face_px / (bottom - top)
  patch = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
  box = tuple(int(round(v)) for v in ((top - y0) * scale, (right - x0) * scale,
                                      (bottom - y0) * scale, (left - x0) * scale))
  return patch, box


def paste(rgb: np.ndarray, patch: np.ndarray, top: int, left: int) -> np.ndarray:
  """A copy of the frame `rgb` with `patch` covering it from pixel (top, left) on."""
  height, width = rgb.shape[:2]
  h, w = patch.shape[:2]
  if top < 0 or left < 0 or top + h > height or left + w > width:
    raise ValueError(f"a {h}x{w} patch at (top={top}, left={left}) does not fit in a "
                     f"{height}x{width} frame")
  out = rgb.copy()
  out[top:top + h, left:left + w] = patch
  return out


def composite_clip(src_path: PathLike, out_path: PathLike, patch: np.ndarray,
                   position: tuple[int, int], face_box: Sequence[int], fps: float | None = None,
                   sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
  """Writes the clip `src_path` with a still `patch` pasted at `position`, as an MP4 at `out_path`.

  `position` is the patch's (top, left) in frame pixels and `face_box` the face inside the patch
  ([top, right, bottom, left], as `face_patch` returns it). Frames come from `media.iter_frames`:
  every frame at the source's own rate when `fps` is None, else sampled at `fps`; the source's
  audio (when it has any) is kept, at `sample_rate`.

  Returns the ground truth, in `make_clip`'s terms: path, source, fps, num_frames, width, height,
  and per written video frame `bystander_boxes`, the pasted face's [top, right, bottom, left].
  """
  src_path, out_path = str(src_path), str(out_path)
  info = media.probe(src_path)
  if not info.has_video:
    raise media.MediaError(src_path, "no video stream to paste into")
  if fps is not None and fps <= 0:
    raise ValueError(f"{src_path}: fps must be positive, got {fps}")
  top, left = (int(v) for v in position)
  h, w = patch.shape[:2]
  if top < 0 or left < 0 or top + h > info.height or left + w > info.width:
    raise ValueError(f"{src_path}: a {h}x{w} patch at (top={top}, left={left}) does not fit in "
                     f"its {info.height}x{info.width} frames")
  face_top, face_right, face_bottom, face_left = (int(v) for v in face_box)
  if not 0 <= face_top < face_bottom <= h or not 0 <= face_left < face_right <= w:
    raise ValueError(f"{src_path}: face box {tuple(face_box)} is not inside the {h}x{w} patch")
  rate = info.fps if fps is None else fps
  # Sampling at twice the nominal rate yields every decoded frame (timestamps rounded to the
  # container's tick would make some miss an exact-rate sampling grid).
  sampling = 2.0 * info.fps if fps is None else fps
  count = 0

  def frames() -> Iterator[np.ndarray]:
    nonlocal count
    for frame in media.iter_frames(src_path, sampling):
      count += 1
      yield paste(frame.rgb, patch, top, left)

  audio = media.load_audio(src_path, sample_rate) if info.has_audio else None
  media.write_video(out_path, frames(), rate, audio, sample_rate)
  box = [top + face_top, left + face_right, top + face_bottom, left + face_left]
  return {
      "path": out_path,
      "source": src_path,
      "fps": rate,
      "num_frames": count,
      "width": info.width,
      "height": info.height,
      "bystander_boxes": [list(box) for _ in range(count)],
  }
