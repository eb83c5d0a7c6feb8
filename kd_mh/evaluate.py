"""Evaluation of a distilled student against its frozen teacher: calibration, pairs, ROC, threshold.

  result = evaluate(config, workdir)   # configs/evaluate.py; writes the files below
  threshold = load_threshold(workdir)  # what `kd-mh detect` reads

Steps:
1. Outputs. One `inference.predict` pass over the evaluation split (and one over the calibration
   split) gives every clip's teacher logits and embedding (from its face) and student logits and
   aligned embedding (from its voice). The teacher is the student run's frozen teacher, so a
   student is always judged with the teacher it was distilled from.
2. Calibration. Each model gets one temperature (`kd_mh.calibration.fit_temperature`) fitted on the
   calibration split: the teacher against the face's label, the student against the voice's
   (`input_pipeline.target_labels`). Too few labelled examples (`min_calibration_examples`) or a
   single class falls back to T = 1, logged and recorded. ECE is reported before and after, on the
   calibration split and on the held-out evaluation split.
3. Pairs, built at the output level: a pair (face of clip i, voice of clip j) is just
   (teacher probs[i], student probs[j]); no model is run again. Only clips with a face and speech
   and only the evaluation split are used, so no speaker seen in training enters a pair (splits are
   speaker-independent wherever the corpus names its speakers). Pair types (`PAIR_TYPES`):
     congruent  a clip's own face and voice, where their labels agree
     swapped    face of i, voice of j != i, two different non-neutral emotions
     flat       face of i, voice of j != i, exactly one of them neutral (a neutral voice with an
                emotional face, or the reverse): flat affect
     natural    a clip's own face and voice whose per-modality labels (`face_label`,
                `voice_label`) both exist and differ
     cross_congruent  face of i, voice of j != i, the same emotion: the control for the main
                comparison. Congruent pairs share a recording and swapped / flat ones never do,
                so a score could separate them by recording rather than by emotion; this
                comparison (`cross_clip`: cross_congruent vs swapped + flat) shows whether it does.
   swapped and flat are disjoint and together are every cross-clip pair whose labels differ.
   Which types there are, and how many of each, is drawn deterministically from `seed`, at most
   `max_pairs` per type.
   Natural incongruence is reported on its own and never mixed with the congruent pairs: for
   CREMA-D it is where the face-only and voice-only human votes disagree; for the generated demo
   corpus it is where the generator gave the face and the voice different emotions, which makes
   those clips incongruent by construction. Either way such a clip cannot count as congruent, and
   unlike swapped pairs its face and voice come from one recording (same speaker, same timing), so
   it is the closest to what `kd-mh detect` meets. A clip whose targets differ but lacks one of
   the per-modality labels (e.g. a tied CREMA-D vote, where the target falls back to the acted
   emotion) is neither congruent nor natural: its status is unknown, so it only lends its face and
   voice to cross-clip pairs.
4. Scores and ROC. Every divergence of `kd_mh.divergence.DIVERGENCES` and the embedding cosine
   distance (teacher embedding vs student aligned output) are taken per pair and analysed with
   `kd_mh.roc.analyze` for each comparison in `COMPARISONS` (the main one: congruent vs swapped +
   flat). The configured divergence and rule (Youden's J, or the fixed-FPR point) give the
   threshold, chosen on the calibration split's pairs, so that the evaluation split's figures at
   that threshold (`operating_point` in metrics.json) are held out; a calibration split without
   both kinds of pair leaves the choice to the evaluation split (logged, and recorded as
   `threshold_split`).
   Scores are per clip (the teacher on frames spread over the clip, the student on up to its
   log-mel crop); `kd-mh detect` applies the threshold per window of `window_s` seconds, which
   is a shorter view of a clip than the one it was chosen on.

Files written to the evaluation workdir: threshold.json (the contract with detect; see
`THRESHOLD_KEYS`), metrics.json (the main comparison's auc, auc_ci, eer, tpr_at_fpr, ... at the top
level, then per other comparison (`comparisons`), per score, calibration, pair counts), roc.png,
divergence_hist.png, reliability.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
from matplotlib import figure
import ml_collections
import numpy as np

from kd_mh import calibration
from kd_mh import divergence
from kd_mh import emotions
from kd_mh import inference
from kd_mh import input_pipeline
from kd_mh import roc
from kd_mh import train

THRESHOLD_FILE = "threshold.json"
METRICS_FILE = "metrics.json"
ROC_PNG = "roc.png"
HISTOGRAM_PNG = "divergence_hist.png"
RELIABILITY_PNG = "reliability.png"

PAIR_TYPES: tuple[str, ...] = ("congruent", "swapped", "flat", "natural", "cross_congruent")
# Comparison -> (the pair types taken as congruent, those taken as incongruent).
COMPARISONS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "main": (("congruent",), ("swapped", "flat")),
    "swapped": (("congruent",), ("swapped",)),
    "flat": (("congruent",), ("flat",)),
    "natural": (("congruent",), ("natural",)),
    "cross_clip": (("cross_congruent",), ("swapped", "flat")),
}
EMBEDDING_SCORE = "embedding_cosine"
SCORES: tuple[str, ...] = tuple(divergence.DIVERGENCES) + (EMBEDDING_SCORE,)
RULES: tuple[str, ...] = ("youden", "fpr")
NEUTRAL = emotions.INDEX["neutral"]

# threshold.json keys and their JSON types; `load_threshold` checks them.
THRESHOLD_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "divergence": str, "threshold": (int, float), "rule": str, "youden_threshold": (int, float),
    "fpr_target": (int, float), "threshold_at_fpr": (int, float), "tpr_at_fpr": (int, float),
    "teacher_temperature": (int, float), "student_temperature": (int, float),
    "student_workdir": str, "student_step": int, "data": dict, "window_s": (int, float),
    "hop_s": (int, float),
}


# ---------------------------------------------------------------------------------------------
# Pairs (pure).


@dataclasses.dataclass(frozen=True)
class Pairs:
  """Face/voice pairs over the clips of one split: pair p is (face of clip face[p], voice of clip
  voice[p]), of type PAIR_TYPES[kind[p]]."""
  face: np.ndarray  # [P] int64
  voice: np.ndarray  # [P] int64
  kind: np.ndarray  # [P] int64

  def __len__(self) -> int:
    return len(self.kind)

  def is_type(self, *names: str) -> np.ndarray:
    """[P] bool: the pairs of any of the types `names`."""
    return np.isin(self.kind, [PAIR_TYPES.index(n) for n in names])

  def counts(self) -> dict[str, int]:
    return {name: int(np.sum(self.kind == k)) for k, name in enumerate(PAIR_TYPES)}


def build_pairs(face_target: np.ndarray, voice_target: np.ndarray, face_label: np.ndarray,
                voice_label: np.ndarray, usable: np.ndarray, max_pairs: int,
                seed: int) -> Pairs:
  """Congruent, swapped, flat and natural pairs (module docstring) over the clips of one split.

  Args:
    face_target: [N] the label the face model learns per clip (`input_pipeline.target_labels`
      of label and face_label), UNLABELLED (-1) where none.
    voice_target: [N] the same for the voice.
    face_label: [N] per-modality face labels as prepared (-1 where the corpus has none).
    voice_label: [N] per-modality voice labels as prepared.
    usable: [N] bool, clips with both a face and speech.
    max_pairs: at most this many pairs of each type, drawn without replacement.
    seed: seeds the draw.

  Returns:
    Pairs ordered by type, then by (face clip, voice clip).
  """
  arrays = [np.asarray(a) for a in (face_target, voice_target, face_label, voice_label, usable)]
  n = arrays[0].shape[0] if arrays[0].ndim == 1 else -1
  if any(a.shape != (n,) for a in arrays):
    raise ValueError(f"labels and usable must all be [N]; got {[a.shape for a in arrays]}")
  face_target, voice_target, face_label, voice_label, usable = arrays
  if usable.dtype != bool:
    raise ValueError(f"usable must be bool, got {usable.dtype}")
  if max_pairs < 1:
    raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
  labelled = usable & (face_target >= 0) & (voice_target >= 0)
  own_congruent = np.flatnonzero(labelled & (face_target == voice_target))
  own_natural = np.flatnonzero(usable & (face_label >= 0) & (voice_label >= 0)
                               & (face_label != voice_label))
  clips = np.flatnonzero(labelled)
  f, v = face_target[clips][:, None], voice_target[clips][None, :]
  other = clips[:, None] != clips[None, :]  # [C, C]: face clip x voice clip
  differ = (f != v) & other
  one_neutral = (f == NEUTRAL) ^ (v == NEUTRAL)
  candidates = {
      "congruent": (own_congruent, own_congruent),
      "swapped": tuple(clips[k] for k in np.nonzero(differ & ~one_neutral)),
      "flat": tuple(clips[k] for k in np.nonzero(differ & one_neutral)),
      "natural": (own_natural, own_natural),
      "cross_congruent": tuple(clips[k] for k in np.nonzero((f == v) & other)),
  }
  rng = np.random.default_rng(seed)
  faces, voices, kinds = [], [], []
  for kind, name in enumerate(PAIR_TYPES):
    face, voice = candidates[name]
    if len(face) > max_pairs:
      keep = np.sort(rng.choice(len(face), max_pairs, replace=False))
      face, voice = face[keep], voice[keep]
    faces.append(face)
    voices.append(voice)
    kinds.append(np.full(len(face), kind))
  return Pairs(face=np.concatenate(faces).astype(np.int64),
               voice=np.concatenate(voices).astype(np.int64),
               kind=np.concatenate(kinds).astype(np.int64))


def pair_scores(face_probs: np.ndarray, voice_probs: np.ndarray, face_embedding: np.ndarray,
                voice_aligned: np.ndarray, pairs: Pairs) -> dict[str, np.ndarray]:
  """Per score of `SCORES`, its value [P] on every pair.

  Args:
    face_probs: [N, K] calibrated teacher probabilities per clip.
    voice_probs: [N, K] calibrated student probabilities per clip.
    face_embedding: [N, D] teacher embeddings.
    voice_aligned: [N, D] student outputs in the teacher's embedding space.
    pairs: the pairs (indices into N).
  """
  fp, vp = face_probs[pairs.face], voice_probs[pairs.voice]
  scores = {name: divergence.divergence(name, fp, vp) for name in divergence.DIVERGENCES}
  scores[EMBEDDING_SCORE] = divergence.embedding_cosine(face_embedding[pairs.face],
                                                        voice_aligned[pairs.voice])
  return scores


# ---------------------------------------------------------------------------------------------
# ROC of every score and comparison (pure).


def analyze_scores(scores: Mapping[str, np.ndarray], pairs: Pairs, fpr_target: float,
                   n_bootstrap: int, seed: int) -> dict[str, dict[str, Optional[roc.RocResult]]]:
  """`roc.analyze` per score and comparison (`COMPARISONS`); None where a side has no pairs."""
  results: dict[str, dict[str, Optional[roc.RocResult]]] = {}
  for name, values in scores.items():
    results[name] = {}
    for comparison, (negatives, positives) in COMPARISONS.items():
      congruent, incongruent = pairs.is_type(*negatives), pairs.is_type(*positives)
      keep = congruent | incongruent
      if not (congruent.any() and incongruent.any()):
        results[name][comparison] = None
        continue
      results[name][comparison] = roc.analyze(values[keep], incongruent[keep],
                                              fpr_target=fpr_target, n_bootstrap=n_bootstrap,
                                              seed=seed)
  return results


_CURVE = ("fpr", "tpr", "thresholds")


def roc_summary(result: Optional[roc.RocResult], comparison: str) -> dict[str, Any]:
  """A RocResult as JSON without its curve, or why there is none."""
  if result is None:
    missing = " or ".join(sum(COMPARISONS[comparison], ()))
    return {"skipped": f"no {missing} pairs"}
  return {k: v for k, v in result.to_json().items() if k not in _CURVE}


def finite_threshold(threshold: float, scores: np.ndarray) -> float:
  """`threshold`, or where it is +inf (no point of the rule flags any pair), the smallest float
  above every score: it flags none of them and stays a JSON number."""
  if math.isfinite(threshold):
    return float(threshold)
  return float(np.nextafter(np.max(scores), np.inf))


def operating_point(scores: np.ndarray, pairs: Pairs, threshold: float) -> dict[str, Any]:
  """TPR and FPR of flagging `scores >= threshold` on the main comparison's pairs."""
  negatives, positives = COMPARISONS["main"]
  positive, negative = pairs.is_type(*positives), pairs.is_type(*negatives)
  flagged = scores >= threshold
  rate = lambda mask: float(np.mean(flagged[mask])) if mask.any() else None
  return {"threshold": float(threshold), "tpr": rate(positive), "fpr": rate(negative),
          "n_positive": int(positive.sum()), "n_negative": int(negative.sum())}


def choose_threshold(config: ml_collections.ConfigDict, calibration_outputs, calibrations,
                     evaluation_roc: roc.RocResult, evaluation_scores: Mapping[str, np.ndarray],
                     evaluation_pairs: Pairs) -> dict[str, Any]:
  """The thresholds of both rules, chosen on the calibration split's pairs (so the evaluation
  split's figures at that threshold are held out), or on the evaluation split when the
  calibration split gives no congruent or no incongruent pair (logged and recorded)."""
  roc_result, split_scores = None, None
  if calibration_outputs is not None:
    outputs, face_target, voice_target = calibration_outputs
    usable = outputs["has_face"] & outputs["has_speech"]
    pairs = build_pairs(face_target, voice_target, outputs["face_label"], outputs["voice_label"],
                        usable, max_pairs=int(config.max_pairs), seed=int(config.seed))
    counts = pairs.counts()
    if counts["congruent"] and counts["swapped"] + counts["flat"]:
      face_probs = calibration.apply_temperature(outputs["teacher_logits"],
                                                 calibrations["teacher"].temperature)
      voice_probs = calibration.apply_temperature(outputs["student_logits"],
                                                  calibrations["student"].temperature)
      scores = divergence.divergence(config.divergence, face_probs[pairs.face],
                                     voice_probs[pairs.voice])
      selected = pairs.is_type(*sum(COMPARISONS["main"], ()))
      roc_result = roc.analyze(scores[selected], pairs.is_type(*COMPARISONS["main"][1])[selected],
                               fpr_target=float(config.fpr_target), n_bootstrap=1,
                               seed=int(config.seed))
      split, split_scores = config.data.calibration_split, scores[selected]
    else:
      logging.warning("the calibration split gives %s: the threshold is chosen on the evaluation "
                      "split, whose figures at it are then not held out", counts)
  if roc_result is None:
    roc_result = evaluation_roc
    split = config.data.split
    split_scores = evaluation_scores[config.divergence][
        evaluation_pairs.is_type(*sum(COMPARISONS["main"], ()))]
  if not (math.isfinite(roc_result.youden_threshold)
          and math.isfinite(roc_result.threshold_at_fpr)):
    logging.warning("no point of a rule flags any pair; its threshold is set above every score")
  return {"split": split,
          "youden": finite_threshold(roc_result.youden_threshold, split_scores),
          "at_fpr": finite_threshold(roc_result.threshold_at_fpr, split_scores),
          "tpr_at_fpr": roc_result.tpr_at_fpr}


def comparison_label(comparison: str) -> str:
  negatives, positives = COMPARISONS[comparison]
  return f"{'+'.join(negatives)} vs {'+'.join(positives)}"


# ---------------------------------------------------------------------------------------------
# Calibration (pure).


@dataclasses.dataclass(frozen=True)
class Calibration:
  """The temperature of one model; T = 1 with `fallback` saying why when none was fitted."""
  temperature: float
  n: int  # labelled examples it was fitted on (or would have been)
  n_classes: int
  fallback: str = ""


def calibrate(logits: np.ndarray, labels: np.ndarray, min_examples: int) -> Calibration:
  """Temperature scaling on the labelled rows of `labels` (-1: left out), or T = 1 when there are
  fewer than `min_examples` of them or a single class."""
  labels = np.asarray(labels)
  labelled = labels[labels != emotions.UNLABELLED]
  n, n_classes = int(labelled.size), int(np.unique(labelled).size)
  if n < min_examples:
    return Calibration(1.0, n, n_classes, f"{n} labelled examples (< {min_examples})")
  if n_classes < 2:
    return Calibration(1.0, n, n_classes, "a single class")
  return Calibration(calibration.fit_temperature(logits, labels), n, n_classes)


def ece_before_after(logits: np.ndarray, labels: np.ndarray, temperature: float,
                     n_bins: int) -> Optional[dict[str, float]]:
  """ECE at T = 1 and at `temperature` on the labelled rows; None when there are none."""
  labels = np.asarray(labels)
  n = int(np.sum(labels != emotions.UNLABELLED))
  if n == 0:
    return None
  return {"before": calibration.expected_calibration_error(
              calibration.apply_temperature(logits, 1.0), labels, n_bins),
          "after": calibration.expected_calibration_error(
              calibration.apply_temperature(logits, temperature), labels, n_bins),
          "n": n}


def modality_targets(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(face target, voice target) [N] of `inference.predict` outputs, UNLABELLED where the clip
  lacks that modality's input."""
  face = input_pipeline.target_labels(outputs["label"], outputs["face_label"])
  voice = input_pipeline.target_labels(outputs["label"], outputs["voice_label"])
  return (np.where(outputs["has_face"], face, emotions.UNLABELLED).astype(np.int64),
          np.where(outputs["has_speech"], voice, emotions.UNLABELLED).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# threshold.json.


def load_threshold(workdir: str) -> dict[str, Any]:
  """The threshold.json of an evaluation workdir, checked.

  Raises:
    ValueError: naming the file, when it is missing, not JSON, or lacks or mistypes a key of
      `THRESHOLD_KEYS` (or holds an unknown divergence or rule, or a non-positive temperature).
  """
  path = epath.Path(workdir) / THRESHOLD_FILE
  if not path.is_file():
    raise ValueError(f"{path} not found: {workdir} is not an evaluation workdir (write one with "
                     "`kd-mh evaluate --workdir=...`)")
  try:
    record = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: not JSON ({e})") from None
  if not isinstance(record, dict):
    raise ValueError(f"{path}: expected a JSON object")
  for key, kind in THRESHOLD_KEYS.items():
    if key not in record:
      raise ValueError(f"{path}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
      raise ValueError(f"{path}: {key} has the wrong type ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"{path}: {key} is not finite")
  if record["divergence"] not in divergence.DIVERGENCES:
    raise ValueError(f"{path}: unknown divergence {record['divergence']!r}; expected one of "
                     f"{', '.join(divergence.DIVERGENCES)}")
  if record["rule"] not in RULES:
    raise ValueError(f"{path}: unknown rule {record['rule']!r}; expected one of {RULES}")
  for key in ("teacher_temperature", "student_temperature", "window_s", "hop_s"):
    if record[key] <= 0:
      raise ValueError(f"{path}: {key} must be > 0, got {record[key]}")
  return record


# ---------------------------------------------------------------------------------------------
# The run: I/O at the edges.


def _validate(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the field, before any model or data is loaded."""
  checks = (
      ("student", bool(config.student), "is empty: pass student=RUN (a student run's workdir)"),
      ("data.split", bool(config.data.split), "is empty"),
      ("divergence", config.divergence in divergence.DIVERGENCES,
       f"must be one of {', '.join(divergence.DIVERGENCES)}"),
      ("rule", config.rule in RULES, f"must be one of {', '.join(RULES)}"),
      ("fpr_target", 0 < config.fpr_target < 1, "must be in (0, 1)"),
      ("n_bootstrap", config.n_bootstrap >= 1, "must be >= 1"),
      ("max_pairs", config.max_pairs >= 1, "must be >= 1"),
      ("min_calibration_examples", config.min_calibration_examples >= 1, "must be >= 1"),
      ("ece_bins", config.ece_bins >= 1, "must be >= 1"),
      ("batch_size", config.batch_size >= 1, "must be >= 1"),
      ("window_s", config.window_s > 0, "must be > 0"),
      ("hop_s", config.hop_s > 0, "must be > 0"),
  )
  for field, ok, message in checks:
    if not ok:
      value = config
      for part in field.split("."):
        value = value[part]
      raise ValueError(f"config.{field}={value!r} {message}")


def _load_student(config: ml_collections.ConfigDict) -> train.Trained:
  step = None if config.student_step < 0 else int(config.student_step)
  trained = train.load_trained(config.student, step=step)
  if trained.config.mode != "student":
    raise ValueError(f"{config.student} is a {trained.config.mode!r} run; evaluate needs a student "
                     "run distilled from a teacher (mode 'student')")
  if train.label_classes(trained.config) is not None:
    raise ValueError(f"{config.student} learnt the class set {trained.config.data.classes!r}; "
                     "evaluate compares the seven emotions (config.data.classes='')")
  return trained


def _check_workdir(workdir: str) -> epath.Path:
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise ValueError(f"workdir {workdir} exists and is not a directory")
  return path


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Calibrates, builds pairs, scores them, picks the threshold and writes the evaluation workdir.

  Args:
    config: configs/evaluate.py.
    workdir: the evaluation workdir (created if needed; earlier results are overwritten).

  Returns:
    {"threshold": the threshold.json record, "metrics": the metrics.json record}.

  Raises:
    ValueError: a bad config (naming the field), student run, corpus or workdir, or a split that
      gives no congruent or no swapped/flat pairs.
  """
  _validate(config)
  out = _check_workdir(workdir)
  trained = _load_student(config)
  data_dir = config.data.data_dir or trained.config.data.data_dir
  name = config.data.name or trained.config.data.name
  logging.info("student %s (step %d), corpus %s at %s", config.student, trained.step, name,
               data_dir)

  calibrations, ece = {}, {}
  calibration_outputs = None
  if config.data.calibration_split:
    if config.data.calibration_split == config.data.split:
      logging.warning("calibrating on the evaluation split %r itself", config.data.split)
    split = input_pipeline.open_split(data_dir, name, config.data.calibration_split)
    logging.info("calibration split %s: %s", split.name, input_pipeline.example_count(split))
    cal = inference.predict(trained, split, batch_size=int(config.batch_size))
    cal_face, cal_voice = modality_targets(cal)
    calibration_outputs = (cal, cal_face, cal_voice)
    for model, logits, labels in (("teacher", cal["teacher_logits"], cal_face),
                                  ("student", cal["student_logits"], cal_voice)):
      calibrations[model] = calibrate(logits, labels, int(config.min_calibration_examples))
      ece[model] = {config.data.calibration_split: ece_before_after(
          logits, labels, calibrations[model].temperature, int(config.ece_bins))}
  else:
    calibrations = {m: Calibration(1.0, 0, 0, "calibration disabled (calibration_split='')")
                    for m in ("teacher", "student")}
    ece = {"teacher": {}, "student": {}}
  for model, c in calibrations.items():
    if c.fallback:
      logging.warning("%s: no temperature fitted (%s): T = 1", model, c.fallback)
    else:
      logging.info("%s: T = %.4f from %d examples of %d classes", model, c.temperature, c.n,
                   c.n_classes)

  split = input_pipeline.open_split(data_dir, name, config.data.split)
  logging.info("evaluation split %s: %s", split.name, input_pipeline.example_count(split))
  outputs = inference.predict(trained, split, batch_size=int(config.batch_size))
  face_target, voice_target = modality_targets(outputs)
  t_teacher = calibrations["teacher"].temperature
  t_student = calibrations["student"].temperature
  ece["teacher"][config.data.split] = ece_before_after(
      outputs["teacher_logits"], face_target, t_teacher, int(config.ece_bins))
  ece["student"][config.data.split] = ece_before_after(
      outputs["student_logits"], voice_target, t_student, int(config.ece_bins))
  face_probs = calibration.apply_temperature(outputs["teacher_logits"], t_teacher)
  voice_probs = calibration.apply_temperature(outputs["student_logits"], t_student)

  usable = outputs["has_face"] & outputs["has_speech"]
  pairs = build_pairs(face_target, voice_target, outputs["face_label"], outputs["voice_label"],
                      usable, max_pairs=int(config.max_pairs), seed=int(config.seed))
  counts = pairs.counts()
  logging.info("pairs from %d of %d clips with a face and speech: %s", int(usable.sum()),
               len(usable), counts)
  if counts["congruent"] == 0 or counts["swapped"] + counts["flat"] == 0:
    raise ValueError(f"{split.name} gives {counts['congruent']} congruent and "
                     f"{counts['swapped'] + counts['flat']} swapped/flat pairs; the ROC needs both "
                     "(a larger split, or clips with a face, speech and labels)")
  scores = pair_scores(face_probs, voice_probs, outputs["teacher_embedding"],
                       outputs["student_aligned"], pairs)
  logging.info("ROC of %d scores x %d comparisons, %d bootstrap resamples each", len(scores),
               len(COMPARISONS), int(config.n_bootstrap))
  results = analyze_scores(scores, pairs, fpr_target=float(config.fpr_target),
                           n_bootstrap=int(config.n_bootstrap), seed=int(config.seed))

  main = results[config.divergence]["main"]
  chosen = choose_threshold(
      config, calibration_outputs, calibrations, main, scores, pairs)
  rule_threshold = chosen["youden"] if config.rule == "youden" else chosen["at_fpr"]
  data = {"data_dir": str(data_dir), "name": name,
          "calibration_split": config.data.calibration_split, "split": config.data.split,
          "threshold_split": chosen["split"], "pairs": counts}
  threshold = {
      "divergence": config.divergence,
      "threshold": rule_threshold,
      "rule": config.rule, "youden_threshold": chosen["youden"],
      "fpr_target": float(config.fpr_target),
      "threshold_at_fpr": chosen["at_fpr"], "tpr_at_fpr": chosen["tpr_at_fpr"],
      "teacher_temperature": t_teacher, "student_temperature": t_student,
      "student_workdir": str(epath.Path(config.student).resolve()),
      "student_step": trained.step, "data": data,
      "window_s": float(config.window_s), "hop_s": float(config.hop_s),
  }
  metrics = {
      "comparison": comparison_label("main"), "divergence": config.divergence,
      **roc_summary(main, "main"),
      "comparisons": {c: roc_summary(results[config.divergence][c], c)
                      for c in COMPARISONS if c != "main"},
      "scores": {s: {**{c: roc_summary(r, c) for c, r in by_comparison.items()},
                     "mean": {t: (float(np.mean(scores[s][pairs.is_type(t)]))
                                  if counts[t] else None) for t in PAIR_TYPES}}
                 for s, by_comparison in results.items()},
      "pairs": counts,
      # The threshold (chosen on threshold_split) applied to this split's main comparison.
      "operating_point": operating_point(
          scores[config.divergence], pairs, rule_threshold),
      "calibration": {m: {**dataclasses.asdict(c), "ece": ece[m]}
                      for m, c in calibrations.items()},
      "student_workdir": threshold["student_workdir"], "student_step": trained.step,
      "data": data,
  }
  out.mkdir(parents=True, exist_ok=True)
  (out / THRESHOLD_FILE).write_text(json.dumps(threshold, indent=2) + "\n")
  (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
  plot_roc(results, config.divergence, threshold, out / ROC_PNG)
  plot_histograms(scores, pairs, config.divergence, threshold["threshold"], out / HISTOGRAM_PNG)
  plot_reliability(
      {"teacher": (outputs["teacher_logits"], face_target, t_teacher),
       "student": (outputs["student_logits"], voice_target, t_student)},
      int(config.ece_bins), config.data.split, out / RELIABILITY_PNG)
  logging.info("wrote %s, %s and plots to %s", THRESHOLD_FILE, METRICS_FILE, out)
  return {"threshold": threshold, "metrics": metrics}


# ---------------------------------------------------------------------------------------------
# Summary and plots.


def _fmt(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.3f}"


def summary_table(metrics: Mapping[str, Any], threshold: Mapping[str, Any]) -> str:
  """A plain-text table of the evaluation (per comparison and per score)."""
  counts = metrics["pairs"]
  fpr = f"TPR@{100 * threshold['fpr_target']:g}%FPR"
  rows = [f"pairs: {', '.join(f'{t} {counts[t]}' for t in PAIR_TYPES)}",
          f"divergence {threshold['divergence']}: threshold {threshold['threshold']:.4g} "
          f"({threshold['rule']})",
          "",
          f"{'comparison':<28} {'n+/n-':>9}  {'AUC [95% CI]':<22} {'EER':>6} {fpr:>12}"]
  by_comparison = metrics["scores"][threshold["divergence"]]
  for comparison in COMPARISONS:
    r = by_comparison[comparison]
    label = comparison_label(comparison)
    if "skipped" in r:
      rows.append(f"{label:<28} {'':>9}  {r['skipped']}")
      continue
    ci = f"{_fmt(r['auc'])} [{_fmt(r['auc_ci'][0])}, {_fmt(r['auc_ci'][1])}]"
    n = f"{r['n_positive']}/{r['n_negative']}"
    rows.append(f"{label:<28} {n:>9}  {ci:<22} "
                f"{_fmt(r['eer']):>6} {_fmt(r['tpr_at_fpr']):>12}")
  rows += ["", f"{comparison_label('main')}, by score:"]
  for score, by in metrics["scores"].items():
    r = by["main"]
    rows.append(f"  {score:<18} AUC {_fmt(r['auc'])} [{_fmt(r['auc_ci'][0])}, "
                f"{_fmt(r['auc_ci'][1])}]  EER {_fmt(r['eer'])}")
  rows.append("")
  for model, c in metrics["calibration"].items():
    eces = "; ".join(f"{split} ECE {_fmt(e['before'])} -> {_fmt(e['after'])} (n={e['n']})"
                     for split, e in c["ece"].items() if e is not None)
    fitted = f"fallback: {c['fallback']}" if c["fallback"] else f"fitted on {c['n']}"
    rows.append(f"{model} T = {c['temperature']:.3f} ({fitted}); {eces or 'no labelled examples'}")
  return "\n".join(rows)


def plot_roc(results: Mapping[str, Mapping[str, Optional[roc.RocResult]]], chosen: str,
             threshold: Mapping[str, Any], path: epath.Path) -> None:
  """Left: the chosen divergence's ROC per comparison, with the operating point; right: the
  main comparison's ROC per score."""
  fig = figure.Figure(figsize=(11, 5))
  left, right = fig.subplots(1, 2)
  for comparison, r in results[chosen].items():
    if r is not None:
      left.plot(r.fpr, r.tpr, label=f"{comparison_label(comparison)} (AUC {r.auc:.3f})")
  main = results[chosen]["main"]
  # The operating point: the curve point that flags what `score >= threshold` flags.
  point = int(np.sum(main.thresholds >= threshold["threshold"])) - 1
  left.plot(main.fpr[point], main.tpr[point], "ko",
            label=f"threshold {threshold['threshold']:.3g} ({threshold['rule']})")
  left.set_title(f"{chosen}: ROC per pair type")
  for score, by_comparison in results.items():
    r = by_comparison["main"]
    right.plot(r.fpr, r.tpr, label=f"{score} (AUC {r.auc:.3f})")
  right.set_title(f"{comparison_label('main')}: ROC per score")
  for ax in (left, right):
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  fig.savefig(str(path), dpi=100)


def plot_histograms(scores: Mapping[str, np.ndarray], pairs: Pairs, chosen: str,
                    threshold: float, path: epath.Path) -> None:
  """Per score, the distribution of its values per pair type; the threshold on the chosen one."""
  fig = figure.Figure(figsize=(12, 7))
  axes = fig.subplots(2, math.ceil(len(scores) / 2)).ravel()
  for ax, (score, values) in zip(axes, scores.items()):
    bins = np.linspace(values.min(), values.max() + 1e-12, 30)
    for t in PAIR_TYPES:
      chosen_values = values[pairs.is_type(t)]
      if chosen_values.size:
        ax.hist(chosen_values, bins=bins, histtype="step", density=True,
                label=f"{t} ({chosen_values.size})")
    if score == chosen:
      ax.axvline(threshold, color="k", linestyle="--", label="threshold")
    ax.set(title=score, xlabel="score", ylabel="density")
    ax.legend(fontsize=7)
  for ax in axes[len(scores):]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(str(path), dpi=100)


def plot_reliability(models: Mapping[str, tuple[np.ndarray, np.ndarray, float]], n_bins: int,
                     split: str, path: epath.Path) -> None:
  """Reliability diagrams on `split`, before and after temperature scaling, per model:
  {name: (logits, labels, temperature)}."""
  fig = figure.Figure(figsize=(10, 5))
  axes = fig.subplots(1, len(models))
  for ax, (name, (logits, labels, temperature)) in zip(axes, models.items()):
    ax.plot([0, 1], [0, 1], ":", color="grey")
    if np.any(labels != emotions.UNLABELLED):
      for t, label in ((1.0, "T = 1"), (temperature, f"T = {temperature:.3g}")):
        d = calibration.reliability_diagram_data(calibration.apply_temperature(logits, t), labels,
                                                 n_bins)
        full = d.counts > 0
        ax.plot(d.confidence[full], d.accuracy[full], "o-", label=f"{label}, ECE {d.ece:.3f}")
      ax.legend(loc="upper left", fontsize=8)
    else:
      ax.text(0.5, 0.5, "no labelled examples", ha="center")
    ax.set(title=f"{name} ({split})", xlabel="confidence (top-1 probability)",
           ylabel="accuracy", xlim=(0, 1), ylim=(-0.02, 1.02))
  fig.tight_layout()
  fig.savefig(str(path), dpi=100)
