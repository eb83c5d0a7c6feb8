"""The RAVDESS speaker-independent speech emotion benchmark (`python -m launch.ravdess_uar`).

Train on some actors, test on others. `prepare` builds the speech of the chosen actors (the test
actors' clips form the test split, every other chosen actor's the train split) and, for the
distillation runs, a face corpus to borrow faces from; `run_config` gives the config of each run
(the default student configs plus the benchmark's data and schedule); `score` measures a run's
last checkpoint on the held-out actors. Nothing is tuned on the test actors.

Each run is scored twice: utterance by utterance (the speaker-independent figure), and with each
test actor's class scores standardised over that actor's own test utterances
(`speaker_standardised`), which removes a speaker's lean towards some classes. The second is
transductive: it reads every test utterance of an actor (not their labels) before deciding one,
as speaker-level normalisation does in the speech emotion literature, and a detector could do with
one person's recording.

Every run stands next to a reference on the same split (`reference_score`): per-utterance MFCC
statistics and a linear classifier, the classic baseline of speech emotion recognition.

Runs:
  supervised  labels only (cross-entropy), RAVDESS's own eight classes
  kd_labels   distillation from the frozen FER2013 face teacher + embedding alignment + labels,
              eight classes (folded onto the teacher's seven for distillation: calm counts as
              neutral)
  kd_only     distillation + alignment alone, no speech label: the seven FER2013 classes (the
              teacher has no calm), scored with calm as neutral
RAVDESS speech has no faces, so each utterance of a distillation run borrows, per epoch, the face
frames of a clip with the same label from a face corpus (pseudo-pairing in
`kd_mh.input_pipeline`); labels missing from that corpus leave those utterances without a teacher
target.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Optional, Sequence

import ml_collections
import numpy as np
from scipy import fft
from scipy import special
from sklearn import linear_model
from sklearn import pipeline
from sklearn import preprocessing

from data_prep import build
from data_prep import corpora
from data_prep.corpora import splits
from kd_mh import emotions
from kd_mh import inference
from kd_mh import input_pipeline
from kd_mh import train

RUNS = ("supervised", "kd_labels", "kd_only")
# The reference every run is set against: MFCC statistics and a linear classifier.
REFERENCE = "mfcc_linear"
NUM_MFCC = 20  # librosa.feature.mfcc's default


def set_field(config: ml_collections.ConfigDict, assignment: str) -> None:
  """Applies FIELD.SUB=VALUE, the value parsed as the field's type."""
  path, has_value, value = assignment.partition("=")
  if not has_value:
    raise ValueError(f"config override {assignment!r}: expected FIELD=VALUE")
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  current = node[leaf]
  if isinstance(current, bool):
    node[leaf] = value.lower() in ("1", "true")
  elif isinstance(current, (tuple, list)):
    node[leaf] = tuple(type(current[0])(v) for v in value.strip("()").split(",") if v.strip())
  else:
    node[leaf] = type(current)(value)


def run_config(run: str, speech_dir: str, faces_corpus: str, faces_dir: Optional[str],
               steps: int, seed: int, overrides: Sequence[str] = (),
               runlocal: bool = False) -> ml_collections.ConfigDict:
  """The config of one run: the default student config plus this benchmark's data and schedule."""
  arg = f"corpus=ravdess,data_dir={speech_dir},runlocal={runlocal}"
  if run == "supervised":
    config = train.load_config("student_supervised", f"{arg},classes=ravdess")
  else:
    classes = "ravdess" if run == "kd_labels" else ""
    config = train.load_config("student_kd", f"{arg},classes={classes},pair_corpus={faces_corpus},"
                          f"pair_data_dir={faces_dir}")
    config.data.pair_faces.eval_split = "train"  # the face corpus lends all its clips
    # The borrowed faces are short clips (2 s in CREMA-D): 4 frames spread over the clip give
    # the frozen teacher's view of it at a quarter of the default's cost.
    config.data.max_frames = 4
    if run == "kd_only":
      config.loss.ce_weight = 0.0
  config.seed = seed
  config.data.eval_split = "test"  # monitored only: each run is scored at its last step
  config.num_train_steps = steps
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
  config.checkpoint_every_steps = config.eval_every_steps = max(steps // 5, 1)
  for assignment in overrides:
    set_field(config, assignment)
  return config


def prepare(out: pathlib.Path, root: str, train_actors: Optional[Sequence[str]],
            test_actors: Sequence[str], faces_corpus: str, faces_root: Optional[str],
            workers: int) -> dict[str, Any]:
  """Builds OUT/speech (train / test by actor) and, with a face root, OUT/faces (all train)."""
  specs = corpora.read_corpus("ravdess", root)
  present = sorted({s.speaker_id for s in specs if s.speaker_id})
  for role, actors in (("test", test_actors), ("train", train_actors or [])):
    unknown = sorted(set(actors) - set(present))
    if unknown:
      raise ValueError(f"{role} actors {unknown} are not under {root} (it has {present})")
  chosen = set(train_actors or present) | set(test_actors)
  specs = splits.assign_splits([s for s in specs if s.speaker_id in chosen], (1.0, 0.0, 0.0),
                               test_speakers=test_actors, validation_speakers=[])
  summary = {"speech": build.build(specs, out / "speech", workers=workers, corpus="ravdess",
                                   progress=True)}
  if faces_root:
    face_specs = splits.assign_splits(corpora.read_corpus(faces_corpus, faces_root),
                                      (1.0, 0.0, 0.0))
    summary["faces"] = build.build(face_specs, out / "faces", workers=workers,
                                   corpus=faces_corpus, progress=True)
  return summary


def fold_confusion(confusion: np.ndarray, class_map: Sequence[int]) -> np.ndarray:
  """Sums a confusion matrix over a set's classes onto the seven emotions (rows and columns)."""
  fold = emotions.fold_matrix(class_map)
  return fold.T @ confusion @ fold


def speaker_standardised(logits: np.ndarray, speakers: np.ndarray) -> np.ndarray:
  """Log-probabilities [N, K] of `logits`, each class's standardised over each speaker's
  utterances (zero mean, unit variance per speaker and class).

  A speaker whose voice pushes every utterance towards one class (a low voice towards sad, say)
  gets that lean removed; the classes are then compared by how far an utterance stands out from
  that speaker's usual. Speakers with a single utterance keep their log-probabilities, and a
  class scored impossible (-inf) stays so.
  """
  log_probs = special.log_softmax(np.asarray(logits, np.float64), axis=1)
  out = log_probs.copy()
  for speaker in np.unique(speakers):
    rows = speakers == speaker
    if rows.sum() < 2:
      continue
    mine = log_probs[rows]
    with np.errstate(invalid="ignore"):
      standardised = (mine - mine.mean(axis=0)) / np.maximum(mine.std(axis=0), 1e-6)
    out[rows] = np.where(np.isfinite(mine), standardised, mine)
  return out


def _confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  return confusion


def class_metrics(labels: np.ndarray, scores: np.ndarray, speakers: np.ndarray,
                  classes: Sequence[str]) -> dict[str, Any]:
  """Accuracy, UAR (8-class, folded to 7, and with scores standardised per speaker), per-class
  recall and the confusion matrix of class scores [N, K] (logits or log-probabilities)."""
  confusion = _confusion(labels, scores.argmax(axis=1), len(classes))
  per_speaker = _confusion(labels, speaker_standardised(scores, speakers).argmax(axis=1),
                           len(classes))
  folded = fold_confusion(confusion, emotions.fold_onto_fer(classes))
  support = confusion.sum(axis=1)
  # None for a class the test actors never show (UAR leaves it out too).
  recall = [float(confusion[k, k] / n) if n else None for k, n in enumerate(support)]
  return {
      "classes": list(classes), "test_examples": int(len(labels)),
      "accuracy": train.accuracy(confusion), "uar": train.unweighted_average_recall(confusion),
      "accuracy_7": train.accuracy(folded), "uar_7": train.unweighted_average_recall(folded),
      "recall": dict(zip(classes, recall)),
      "confusion": confusion.tolist(),
      "uar_speaker_standardised": train.unweighted_average_recall(per_speaker),
      "accuracy_speaker_standardised": train.accuracy(per_speaker),
      "test_speakers": int(len(np.unique(speakers))),
  }


def score(workdir: pathlib.Path, speech_dir: str, faces_dir: Optional[str]) -> dict[str, Any]:
  """Test-actor metrics of a run's last checkpoint, and its teacher agreement on train clips."""
  trained = train.load_trained(str(workdir), latest=True)
  config = trained.config
  classes = train.label_classes(config) or emotions.EMOTIONS
  faces = (input_pipeline.open_split(faces_dir, config.data.pair_faces.name, "train")
           if config.mode == "student" else None)
  test_split = input_pipeline.open_split(speech_dir, config.data.name, "test")
  test = inference.predict(trained, test_split)
  labelled = test["label"] >= 0
  speakers = input_pipeline.read_field(test_split, "speaker_id")[labelled]
  result = {"step": trained.step,
            **class_metrics(test["label"][labelled], test["student_logits"][labelled], speakers,
                            classes)}
  loss = train.read_scalars(str(workdir)).get("train/loss", {})
  if loss:
    result["train_loss_first_last"] = [loss[min(loss)], loss[max(loss)]]
  if faces is not None:
    paired = inference.predict(
        trained, input_pipeline.open_split(speech_dir, config.data.name, "train"),
        pair_with=faces)
    spec = train.step_spec(config, trained.teacher)
    student = np.asarray(train.predicted_fer_class(paired["student_logits"], spec))
    teacher = paired["teacher_logits"].argmax(axis=1)
    seen = paired["has_face"]
    result["train_agreement"] = float(np.mean(student[seen] == teacher[seen]))
    result["train_agreement_examples"] = int(seen.sum())
    # What two independent predictors with these class frequencies would agree on.
    frequency = lambda labels: np.bincount(labels, minlength=emotions.NUM_CLASSES) / len(labels)
    result["train_agreement_chance"] = float(frequency(student[seen]) @ frequency(teacher[seen]))
  return result


def mfcc_statistics(logmel: np.ndarray, mask: np.ndarray,
                    num_coefficients: int = NUM_MFCC) -> np.ndarray:
  """Mean and standard deviation over an utterance's valid frames of its first MFCCs [2 * n].

  The MFCCs are the orthonormal DCT-II of each log-mel frame, as `librosa.feature.mfcc` takes
  them from a log-mel spectrogram (there in dB, a constant factor the classifier's
  standardisation removes).
  """
  frames = np.asarray(logmel, np.float64)[np.asarray(mask, bool)]
  if not len(frames):
    raise ValueError("the utterance has no valid log-mel frame")
  mfcc = fft.dct(frames, type=2, norm="ortho", axis=1)[:, :num_coefficients]
  return np.concatenate([mfcc.mean(axis=0), mfcc.std(axis=0)])


def _utterance_features(split: input_pipeline.Split, classes: Sequence[str]):
  """MFCC statistics, class indices and speakers of a split's utterances with a label in
  `classes` and speech."""
  position = {c.lower(): k for k, c in enumerate(classes)}
  names = input_pipeline.read_field(split, "label_name")
  logmels = input_pipeline.read_field(split, "logmel")
  masks = input_pipeline.read_field(split, "logmel_mask")
  keep = [i for i, name in enumerate(names)
          if name.strip().lower() in position and np.any(masks[i])]
  features = (np.stack([mfcc_statistics(logmels[i], masks[i]) for i in keep]) if keep
              else np.zeros((0, 2 * NUM_MFCC)))
  labels = np.asarray([position[names[i].strip().lower()] for i in keep], np.int64)
  return features, labels, input_pipeline.read_field(split, "speaker_id")[keep]


def reference_score(speech_dir: str, name: str = "kd_mh_ravdess",
                    classes: Sequence[str] = emotions.class_set("ravdess")) -> dict[str, Any]:
  """The reference baseline on the runs' split: per-utterance MFCC statistics
  (`mfcc_statistics`) and multinomial logistic regression on standardised features, with
  scikit-learn's default settings (nothing tuned), trained on the train actors and scored on the
  test actors like a run."""
  train_x, train_y, _ = _utterance_features(
      input_pipeline.open_split(speech_dir, name, "train"), classes)
  test_x, test_y, speakers = _utterance_features(
      input_pipeline.open_split(speech_dir, name, "test"), classes)
  if len(np.unique(train_y)) < 2 or not len(test_x):
    raise ValueError(f"{REFERENCE}: the train split needs two classes and the test split an "
                     f"utterance, with labels in {list(classes)}")
  model = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                 linear_model.LogisticRegression(max_iter=5000))
  model.fit(train_x, train_y)
  # Columns for every class, also one the train actors lack (it can then never be predicted).
  log_probs = np.full((len(test_x), len(classes)), -np.inf)
  log_probs[:, model.classes_] = model.predict_log_proba(test_x)
  return {"train_examples": int(len(train_x)),
          **class_metrics(test_y, log_probs, speakers, classes)}


def results_table(results: dict[str, Any]) -> str:
  """A Markdown table of the runs' headline figures, the reference baseline's last."""
  fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
  lines = ["| run | classes | test UAR | test accuracy | test UAR, 7 classes (calm as neutral) "
           "| test UAR, scores standardised per actor "
           "| train loss, first -> last log | teacher agreement on train clips (chance) |",
           "|---|---|---|---|---|---|---|---|"]
  rows = list(results["runs"].items())
  rows += [(f"{name} (reference)", r) for name, r in results.get("reference", {}).items()]
  for run, r in rows:
    loss = r.get("train_loss_first_last")
    loss_text = f"{loss[0]:.3f} -> {loss[1]:.3f}" if loss else "n/a"
    agreement = (f"{fmt(r['train_agreement'])} ({fmt(r['train_agreement_chance'])})"
                 if "train_agreement" in r else "n/a")
    lines.append(f"| {run} | {len(r['classes'])} | {fmt(r['uar'])} | {fmt(r['accuracy'])} | "
                 f"{fmt(r['uar_7'])} | {fmt(r.get('uar_speaker_standardised'))} | {loss_text} | "
                 f"{agreement} |")
  return "\n".join(lines)
