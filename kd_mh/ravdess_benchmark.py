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
from scipy import special

from data_prep import build
from data_prep import corpora
from data_prep.corpora import splits
from kd_mh import emotions
from kd_mh import inference
from kd_mh import input_pipeline
from kd_mh import train

RUNS = ("supervised", "kd_labels", "kd_only")


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
  that speaker's usual. Speakers with a single utterance keep their log-probabilities.
  """
  log_probs = special.log_softmax(np.asarray(logits, np.float64), axis=1)
  out = log_probs.copy()
  for speaker in np.unique(speakers):
    rows = speakers == speaker
    if rows.sum() < 2:
      continue
    mine = log_probs[rows]
    out[rows] = (mine - mine.mean(axis=0)) / np.maximum(mine.std(axis=0), 1e-6)
  return out


def _confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  return confusion


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
  labels, logits = test["label"][labelled], test["student_logits"][labelled]
  confusion = _confusion(labels, logits.argmax(axis=1), len(classes))
  speakers = input_pipeline.read_field(test_split, "speaker_id")[labelled]
  per_speaker = _confusion(labels, speaker_standardised(logits, speakers).argmax(axis=1),
                           len(classes))
  folded = fold_confusion(confusion, emotions.fold_onto_fer(classes))
  support = confusion.sum(axis=1)
  # None for a class the test actors never show (UAR leaves it out too).
  recall = [float(confusion[k, k] / n) if n else None for k, n in enumerate(support)]
  result = {
      "step": trained.step, "classes": list(classes), "test_examples": int(labelled.sum()),
      "accuracy": train.accuracy(confusion), "uar": train.unweighted_average_recall(confusion),
      "accuracy_7": train.accuracy(folded), "uar_7": train.unweighted_average_recall(folded),
      "recall": dict(zip(classes, recall)),
      "confusion": confusion.tolist(),
      "uar_speaker_standardised": train.unweighted_average_recall(per_speaker),
      "accuracy_speaker_standardised": train.accuracy(per_speaker),
      "test_speakers": int(len(np.unique(speakers))),
  }
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


def results_table(results: dict[str, Any]) -> str:
  """A Markdown table of the runs' headline figures."""
  fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
  lines = ["| run | classes | test UAR | test accuracy | test UAR, 7 classes (calm as neutral) "
           "| test UAR, scores standardised per actor "
           "| train loss, first -> last log | teacher agreement on train clips (chance) |",
           "|---|---|---|---|---|---|---|---|"]
  for run, r in results["runs"].items():
    loss = r.get("train_loss_first_last")
    loss_text = f"{loss[0]:.3f} -> {loss[1]:.3f}" if loss else "n/a"
    agreement = (f"{fmt(r['train_agreement'])} ({fmt(r['train_agreement_chance'])})"
                 if "train_agreement" in r else "n/a")
    lines.append(f"| {run} | {len(r['classes'])} | {fmt(r['uar'])} | {fmt(r['accuracy'])} | "
                 f"{fmt(r['uar_7'])} | {fmt(r.get('uar_speaker_standardised'))} | {loss_text} | "
                 f"{agreement} |")
  return "\n".join(lines)
