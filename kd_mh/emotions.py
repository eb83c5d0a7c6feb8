"""The one emotion taxonomy of kd_mh and the label maps of every supported corpus.

Classes follow the FER2013 order used by the pretrained face model:
angry, disgust, fear, happy, sad, surprise, neutral.

Corpora whose classes do not fit this set are mapped explicitly, and the choice is a documented
policy rather than a silent default:

* RAVDESS "calm" (02) is mapped to ``neutral`` by default (both are low-arousal, non-negative
  states, and RAVDESS records calm as a separate take of the neutral statement). Pass
  ``calm="drop"`` to leave those clips unlabelled instead. RAVDESS "surprised" (08) maps to
  ``surprise``. The native 8-class label is always kept next to the 7-class one, so 8-class
  speech results remain possible.
* EmoDB "boredom" (L, Langeweile) has no FER2013 class. It is dropped by default (the clip stays,
  unlabelled); ``boredom="neutral"`` maps it to neutral, the nearest low-arousal class.
* CK+ "contempt" (2) has no FER2013 class. It is dropped by default (the image stays,
  unlabelled); ``contempt="disgust"`` maps it to disgust, its usual confusion.

Valence/arousal coordinates (each in [-1, 1]) are the pleasure and arousal values of the
Russell & Mehrabian (1977) PAD ratings ("Evidence for a three-factor theory of emotions",
Journal of Research in Personality 11: 273-294), as commonly tabulated for anger, disgust, fear,
joy, sadness and surprise; neutral sits at the origin. They are coarse class prototypes used to
draw trajectories and to measure a valence/arousal distance, not per-clip ratings.
"""

from __future__ import annotations

import math
import types
from typing import Mapping

import numpy as np

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
INDEX: Mapping[str, int] = types.MappingProxyType({name: i for i, name in enumerate(EMOTIONS)})
UNLABELLED = -1  # label value of a clip without a (mappable) label

# (valence, arousal) per class, in EMOTIONS order; see the module docstring for the source.
VALENCE_AROUSAL: Mapping[str, tuple[float, float]] = types.MappingProxyType({
  "angry": (-0.51, 0.59),
  "disgust": (-0.60, 0.35),
  "fear": (-0.62, 0.82),
  "happy": (0.81, 0.51),
  "sad": (-0.63, -0.27),
  "surprise": (0.40, 0.67),
  "neutral": (0.00, 0.00),
})

_DROP = "drop"

# MELD `Emotion` column.
MELD: Mapping[str, str] = types.MappingProxyType({
  "anger": "angry", "disgust": "disgust", "fear": "fear", "joy": "happy",
  "neutral": "neutral", "sadness": "sad", "surprise": "surprise",
})

# CREMA-D file-name emotion codes.
CREMAD: Mapping[str, str] = types.MappingProxyType({
  "ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad",
})

# CREMA-D perception votes (summaryTable.csv `VoiceVote` / `FaceVote` / `MultiModalVote`).
CREMAD_VOTE: Mapping[str, str] = types.MappingProxyType({
  "A": "angry", "D": "disgust", "F": "fear", "H": "happy", "N": "neutral", "S": "sad",
})

# RAVDESS file-name emotion codes and their native names (8 classes).
RAVDESS_NATIVE: Mapping[str, str] = types.MappingProxyType({
  "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
  "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
})
RAVDESS_NATIVE_CLASSES: tuple[str, ...] = tuple(RAVDESS_NATIVE.values())

# EmoDB file-name letter (6th character) -> native German-initial class name.
EMODB_NATIVE: Mapping[str, str] = types.MappingProxyType({
  "W": "anger", "L": "boredom", "E": "disgust", "A": "fear",
  "F": "happiness", "T": "sadness", "N": "neutral",
})

# CK+ emotion codes (Emotion/*.txt) -> native names.
CKPLUS_NATIVE: Mapping[str, str] = types.MappingProxyType({
  "0": "neutral", "1": "anger", "2": "contempt", "3": "disgust",
  "4": "fear", "5": "happy", "6": "sadness", "7": "surprise",
})

# Synonyms accepted in free-form label CSVs (folder corpora, face-image folders).
_SYNONYMS: Mapping[str, str] = types.MappingProxyType({
  **{name: name for name in EMOTIONS},
  "anger": "angry", "ang": "angry", "mad": "angry",
  "disgusted": "disgust", "dis": "disgust",
  "fearful": "fear", "afraid": "fear", "scared": "fear", "fea": "fear",
  "happiness": "happy", "joy": "happy", "hap": "happy",
  "sadness": "sad",
  "surprised": "surprise", "sur": "surprise",
  "neu": "neutral",
})


class LabelError(ValueError):
  """A label that is neither an emotion nor one of the explicitly handled extra classes."""


def index(name: str) -> int:
  """Class index of a canonical emotion name."""
  try:
    return INDEX[name]
  except KeyError:
    raise LabelError(f"unknown emotion {name!r}; expected one of {', '.join(EMOTIONS)}") from None


def _resolve(native: str, table: Mapping[str, str], extra: Mapping[str, str]) -> int:
  target = extra.get(native, table.get(native))
  if target is None:
    raise LabelError(f"unknown label {native!r}")
  return UNLABELLED if target == _DROP else index(target)


def _policy(value: str, name: str) -> str:
  if value != _DROP and value not in INDEX:
    raise LabelError(f"{name} policy must be 'drop' or one of {', '.join(EMOTIONS)}, got {value!r}")
  return value


def from_meld(name: str) -> int:
  return _resolve(name.strip().lower(), MELD, {})


def from_cremad(code: str) -> int:
  return _resolve(code.strip().upper(), CREMAD, {})


def from_cremad_vote(vote: str) -> int:
  """A CREMA-D vote letter; ties such as ``N:S`` have no single answer and give UNLABELLED."""
  vote = vote.strip().upper()
  if not vote or ":" in vote:
    return UNLABELLED
  return _resolve(vote, CREMAD_VOTE, {})


def from_ravdess(code: str, calm: str = "neutral") -> int:
  """RAVDESS two-digit emotion code -> class index (calm handled by ``calm``)."""
  native = RAVDESS_NATIVE.get(code)
  if native is None:
    raise LabelError(f"unknown RAVDESS emotion code {code!r}")
  return _resolve(native, _SYNONYMS, {"calm": _policy(calm, "calm")})


def from_emodb(letter: str, boredom: str = _DROP) -> int:
  native = EMODB_NATIVE.get(letter.strip().upper())
  if native is None:
    raise LabelError(f"unknown EmoDB emotion letter {letter!r}")
  return _resolve(native, _SYNONYMS, {"boredom": _policy(boredom, "boredom")})


def from_ckplus(code: str, contempt: str = _DROP) -> int:
  try:  # CK+ writes codes as floats, e.g. "3.0000000e+00"
    value = float(code)
  except ValueError:
    value = math.nan
  native = CKPLUS_NATIVE.get(str(int(value))) if math.isfinite(value) and value.is_integer() else None
  if native is None:
    raise LabelError(f"unknown CK+ emotion code {code!r}")
  return _resolve(native, _SYNONYMS, {"contempt": _policy(contempt, "contempt")})


def from_name(name: str, contempt: str = _DROP, boredom: str = _DROP, calm: str = "neutral") -> int:
  """A free-form label (folder CSVs, face-image folders); the extra classes follow their policies."""
  key = name.strip().lower()
  extra = {"contempt": _policy(contempt, "contempt"), "boredom": _policy(boredom, "boredom"),
       "calm": _policy(calm, "calm")}
  return _resolve(key, _SYNONYMS, extra)


# Class sets a speech model can be trained and scored on (`config.data.classes`). "fer" is the
# shared seven; a corpus's native set (e.g. RAVDESS's eight, with calm) is read from each
# example's `label_name`, and folds onto the seven (`fold_onto_fer`) wherever the model meets
# the teacher (distillation, agreement).
CLASS_SETS: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "fer": EMOTIONS,
    "ravdess": RAVDESS_NATIVE_CLASSES,
})


def class_set(name: str) -> tuple[str, ...]:
  """The class names of a class set; "" means the seven FER2013 emotions."""
  try:
    return CLASS_SETS[name or "fer"]
  except KeyError:
    raise LabelError(f"unknown class set {name!r}; one of {', '.join(CLASS_SETS)}") from None


def fold_onto_fer(classes: tuple[str, ...]) -> tuple[int, ...]:
  """Per class of a set, the FER2013 emotion it counts as (calm as neutral).

  Raises LabelError when a class has no FER2013 counterpart or an emotion gets no class: the
  folded distribution must be a distribution over all seven.
  """
  folded = tuple(from_name(name, calm="neutral") for name in classes)
  missing = [EMOTIONS[k] for k in range(NUM_CLASSES) if k not in folded]
  if UNLABELLED in folded or missing:
    raise LabelError(f"classes {classes} do not fold onto the seven emotions (unmapped: "
                     f"{[c for c, k in zip(classes, folded) if k == UNLABELLED]}, "
                     f"missing: {missing})")
  return folded


def fold_matrix(class_map: tuple[int, ...]) -> np.ndarray:
  """[K, 7] 0/1 matrix summing a set's K classes onto the seven (`fold_onto_fer`'s map): a
  distribution p [.., K] folds as p @ M, a confusion matrix C [K, K] as M.T @ C @ M."""
  return np.eye(NUM_CLASSES)[list(class_map)]
