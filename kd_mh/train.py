"""Training and evaluation: teacher fine-tuning, student distillation, the supervised baseline.

  train_and_evaluate(config, workdir)

`config.mode` picks what is trained (configs/*.py hold complete examples):
  teacher             the face teacher on face frames, cross-entropy on the face label
  student             the speech student from the frozen teacher, whose outputs are computed on the
                      fly inside the jitted step: temperature-softened KL + embedding alignment +
                      cross-entropy where a label exists (`kd_mh.losses.total_loss`)
  student_supervised  the speech student from labels alone (cross-entropy), the baseline

The step functions are pure functions of (state, global batch), jitted once with the batch sharded
over the device mesh and the state replicated (`kd_mh.parallel`). Model shapes come from
`jax.eval_shape` before anything is allocated. Every `checkpoint_every_steps` an orbax checkpoint
holds the train state, the input pipeline's position (so a resumed run sees exactly the batches an
uninterrupted one would) and, for the student, the teacher's variables; the latest
`keep_checkpoints` and the best by `best_metric` on the validation split (evaluated at every
checkpoint and every `eval_every_steps`) are kept. A run restarted in the same workdir resumes from
the latest checkpoint that reads back whole: each checkpoint carries a SHA-256 digest of its arrays,
checked on restore, and one that fails (a garbled, truncated or missing file) is set aside with a
warning for the one before it (`CheckpointError` when none is left). orbax writes a checkpoint into
a temporary directory and renames it when complete, so a run killed mid-save leaves no step behind.

Outputs in `workdir`: config.json (the config, with the input shapes it was trained on),
checkpoints/<step>/, TensorBoard event files (train/ and eval/ scalars). A step whose loss,
gradients or update is not finite is not applied; the run stops with `NonFiniteError` at the next
check (every log, evaluation and checkpoint), and the last checkpoint, written before it, stays
the last good one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from typing import Any, Mapping, Optional

from absl import logging
from clu import metric_writers
from etils import epath
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from kd_mh import emotions
from kd_mh import input_pipeline
from kd_mh import losses
from kd_mh import parallel
from kd_mh import records
from kd_mh.emotions import NUM_CLASSES
from kd_mh.models import pretrained
from kd_mh.models import student as student_lib
from kd_mh.models import teacher as teacher_lib

MODES = ("teacher", "student", "student_supervised")
TEACHER_INITS = ("fer2013", "random")  # or the workdir of a teacher run
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable_checkpoints"  # where bad checkpoints are set aside
_DIGEST = "digest"  # the checkpoint item holding `tree_digest` of every other item
_EVAL_METRICS = {
    "teacher": ("accuracy", "uar", "ce"),
    "student": ("accuracy", "uar", "ce", "kd", "align", "agreement", "teacher_accuracy"),
    "student_supervised": ("accuracy", "uar", "ce"),
}


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss, gradient or update."""


class CheckpointError(ValueError):
  """No checkpoint of a workdir could be restored (each one tried is named with its reason)."""


# ---------------------------------------------------------------------------------------------
# Config helpers shared by configs/*.py.


def parse_config_arg(arg: Optional[str], **defaults: Any) -> ml_collections.ConfigDict:
  """Parses the `file.py:ARG` part of `--config` into a ConfigDict of `defaults`' keys.

  ARG is a comma-separated list of `key=value` or bare `key` (= True), e.g.
  `runlocal,data_dir=/tmp/demo/tfds`. Values take the type of their default.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
    kind = type(defaults[key])
    if kind is bool:
      if has_value and value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key} takes true or false, got {value!r}")
      parsed[key] = not has_value or value.lower() in ("true", "1")
    elif not has_value:
      raise ValueError(f"config argument {key} needs a value ({key}=...)")
    else:
      parsed[key] = kind(value)
  return parsed


CONFIGS_DIR = epath.Path(__file__).parent.parent / "configs"


def load_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """get_config(arg) of a config file: a path, or the name of one in configs/ ("student_kd"), as
  `kd-mh train --config=FILE:ARG` would build it."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = epath.Path(name) if name.endswith(".py") else CONFIGS_DIR / f"{name}.py"
  if not path.exists():
    raise ValueError(f"no config file {path}")
  spec = importlib.util.spec_from_file_location(path.stem, str(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def optimizer_config(learning_rate: float, warmup_steps: int) -> ml_collections.ConfigDict:
  """The `config.optimizer` block of every config: AdamW, warmup + cosine decay, clipping."""
  return ml_collections.ConfigDict({
      "learning_rate": learning_rate, "warmup_steps": warmup_steps,
      "end_learning_rate_factor": 0.01,  # the cosine decays to this fraction of the peak
      "weight_decay": 1e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "grad_clip_norm": 1.0})


def _kwargs(config: Any) -> dict[str, Any]:
  """A ConfigDict of module attributes -> hashable keyword arguments (lists become tuples)."""
  items = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in items.items()}


# ---------------------------------------------------------------------------------------------
# Pure pieces: optimiser, train state, step functions, metrics.


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """AdamW with linear warmup + cosine decay and global-norm clipping (hashable: static in jit)."""
  learning_rate: float
  warmup_steps: int
  decay_steps: int
  end_learning_rate_factor: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  grad_clip_norm: float

  def schedule(self) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=self.learning_rate, warmup_steps=self.warmup_steps,
        decay_steps=max(self.decay_steps, self.warmup_steps + 1),
        end_value=self.learning_rate * self.end_learning_rate_factor)

  def make(self) -> optax.GradientTransformation:
    # Decay weight matrices and kernels only, not biases and normalisation scales.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.clip_by_global_norm(self.grad_clip_norm),
        optax.adamw(self.schedule(), b1=self.b1, b2=self.b2, eps=self.eps,
                    weight_decay=self.weight_decay, mask=decay_mask))


@dataclasses.dataclass(frozen=True)
class DistillationSpec:
  """The weights and temperatures of `kd_mh.losses.total_loss`."""
  temperature: float
  kd_weight: float
  align_weight: float
  ce_weight: float
  alignment: str
  nce_temperature: float


@dataclasses.dataclass(frozen=True)
class FaceAugmentSpec:
  """Training-time face augmentation of the teacher (one draw per clip, all its frames alike)."""
  flip: bool  # mirror left-right with probability 1/2
  shift_px: int  # translate by up to this many pixels each way (edges repeated)
  brightness: float  # add up to +-this fraction of the full 0-255 range
  contrast: float  # scale the deviation from the clip's mean level by 1 +- up to this

  @property
  def active(self) -> bool:
    return bool(self.flip or self.shift_px or self.brightness or self.contrast)


def augment_faces(faces: jax.Array, rng: jax.Array, spec: FaceAugmentSpec) -> jax.Array:
  """faces [B, T, S, S, C] (uint8 or 0..255 float) -> augmented float32 faces in 0..255."""
  b, _, height, width, _ = faces.shape
  x = jnp.asarray(faces, jnp.float32)
  k_flip, k_shift, k_bright, k_contrast = jax.random.split(rng, 4)
  if spec.flip:
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    x = jnp.where(flip[:, None, None, None, None], x[:, :, :, ::-1], x)
  if spec.shift_px:
    s = int(spec.shift_px)
    padded = jnp.pad(x, ((0, 0), (0, 0), (s, s), (s, s), (0, 0)), mode="edge")
    offsets = jax.random.randint(k_shift, (b, 2), 0, 2 * s + 1)
    x = jax.vmap(lambda clip, o: jax.lax.dynamic_slice(
        clip, (0, o[0], o[1], 0), (clip.shape[0], height, width, clip.shape[3])))(padded, offsets)
  if spec.contrast or spec.brightness:
    mean = jnp.mean(x, axis=(1, 2, 3, 4), keepdims=True)
    scale = 1.0 + jax.random.uniform(k_contrast, (b, 1, 1, 1, 1), minval=-spec.contrast,
                                     maxval=spec.contrast)
    shift = 255.0 * jax.random.uniform(k_bright, (b, 1, 1, 1, 1), minval=-spec.brightness,
                                       maxval=spec.brightness)
    x = (x - mean) * scale + mean + shift
  return jnp.clip(x, 0.0, 255.0)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything static about a step: the models, the optimiser and the loss settings."""
  mode: str
  model: nn.Module  # the model being trained
  teacher: Optional[nn.Module]  # the frozen teacher (mode "student")
  optimizer: OptimizerSpec
  distillation: Optional[DistillationSpec]  # mode "student"
  # A student with a corpus's own classes (config.data.classes): the FER2013 class of each, onto
  # which its probabilities are summed wherever it meets the teacher. None: the seven.
  class_map: Optional[tuple[int, ...]] = None
  face_augment: Optional[FaceAugmentSpec] = None  # mode "teacher": training-time augmentation


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any  # BatchNorm statistics of the trained model ({} for the student)
  opt_state: Any
  rng: jax.Array  # dropout key; each step folds its step number in


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Per-example input shapes the models are built for."""
  max_frames: int
  face_shape: tuple[int, int, int]
  max_logmel_frames: int
  n_mels: int


def init_teacher(teacher: nn.Module, inputs: Inputs, rng: jax.Array) -> dict[str, Any]:
  """Fresh variables of a Teacher, from dummy faces of the right shape."""
  faces = jnp.zeros((1, inputs.max_frames) + inputs.face_shape, jnp.uint8)
  return teacher.init(rng, faces, jnp.ones((1, inputs.max_frames), bool))


def init_variables(spec: StepSpec, inputs: Inputs, rng: jax.Array) -> dict[str, Any]:
  """Fresh variables of the trained model, from dummy inputs of the right shapes."""
  if spec.mode == "teacher":
    return init_teacher(spec.model, inputs, rng)
  logmel = jnp.zeros((1, inputs.max_logmel_frames, inputs.n_mels), jnp.float32)
  return spec.model.init(rng, logmel, jnp.ones((1, inputs.max_logmel_frames), bool))


def create_state(spec: StepSpec, variables: Mapping[str, Any], rng: jax.Array) -> TrainState:
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=spec.optimizer.make().init(params), rng=rng)


def target_labels(batch: Mapping[str, jax.Array], mode: str) -> jax.Array:
  """The labels the trained model learns: the face's for the teacher, the voice's otherwise."""
  own = batch["face_label"] if mode == "teacher" else batch["voice_label"]
  return input_pipeline.target_labels(batch["label"], own)


def _valid(batch: Mapping[str, jax.Array], mode: str) -> jax.Array:
  """Real examples that have the trained model's input (a face, or speech)."""
  inputs = batch["face_mask"] if mode == "teacher" else batch["logmel_mask"]
  return batch["example_mask"] & jnp.any(inputs, axis=1)


def teacher_outputs(teacher: nn.Module, teacher_variables: Any,
                    batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The frozen teacher's clip {"logits", "embedding"} on a batch: run on its faces, or, for a
  corpus stored as embeddings, pooled from the frame outputs the corpus holds (no forward pass)."""
  if "faces" in batch:
    return teacher.apply(teacher_variables, batch["faces"], batch["face_mask"], train=False)
  return teacher.apply(teacher_variables, batch["face_logits"], batch["face_embedding"],
                       batch["face_mask"], method=teacher_lib.Teacher.pool)


def _teacher_outputs(spec: StepSpec, teacher_variables: Any,
                     batch: Mapping[str, jax.Array]) -> Optional[dict[str, jax.Array]]:
  if spec.mode != "student":
    return None
  return teacher_outputs(spec.teacher, teacher_variables, batch)


def _student_loss(spec: StepSpec, out, teacher_out, batch, labels, valid):
  """(loss, terms) of a student's outputs on a batch."""
  if spec.mode == "student":
    return losses.total_loss(
        out["logits"], out["aligned"], teacher_out["logits"], teacher_out["embedding"], labels,
        valid, teacher_mask=jnp.any(batch["face_mask"], axis=1), class_map=spec.class_map,
        **dataclasses.asdict(spec.distillation))
  ce = losses.cross_entropy(out["logits"], labels, valid)
  return ce, {"ce": ce, "loss": ce}


def predicted_fer_class(logits: jax.Array, spec: StepSpec) -> jax.Array:
  """The student's top FER2013 class, for agreement with the teacher (its own classes folded)."""
  if spec.class_map is not None:
    logits = losses.fold_log_probs(logits, spec.class_map, NUM_CLASSES)
  return jnp.argmax(logits, axis=-1)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], teacher_variables: Any,
               spec: StepSpec) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a global batch; the state is left as it was if anything is not finite."""
  labels = target_labels(batch, spec.mode)
  valid = _valid(batch, spec.mode)
  teacher_out = _teacher_outputs(spec, teacher_variables, batch)
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    if spec.mode == "teacher":
      faces = batch["faces"]
      if spec.face_augment is not None and spec.face_augment.active:
        faces = augment_faces(faces, jax.random.fold_in(dropout_rng, 1), spec.face_augment)
      out, updates = spec.model.apply(
          {"params": params, "batch_stats": state.batch_stats}, faces,
          batch["face_mask"], train=True, mutable=["batch_stats"])
      ce = losses.cross_entropy(out["logits"], labels, valid)
      return ce, (out, {"ce": ce, "loss": ce}, updates["batch_stats"])
    out = spec.model.apply({"params": params}, batch["logmel"], batch["logmel_mask"], train=True,
                           rngs={"dropout": dropout_rng})
    loss, terms = _student_loss(spec, out, teacher_out, batch, labels, valid)
    return loss, (out, terms, state.batch_stats)

  (loss, (out, terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = spec.optimizer.make().update(grads, state.opt_state, state.params)
  grad_norm, update_norm = optax.global_norm(grads), optax.global_norm(updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
  stepped = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)

  predicted = jnp.argmax(out["logits"], axis=-1)
  labelled = valid & (labels >= 0)
  metrics = {**terms, "grad_norm": grad_norm, "finite": finite,
             "correct": jnp.sum(labelled & (predicted == labels)), "labelled": jnp.sum(labelled)}
  if teacher_out is not None:
    with_teacher = valid & jnp.any(batch["face_mask"], axis=1)
    metrics["agree"] = jnp.sum(with_teacher & (predicted_fer_class(out["logits"], spec)
                                               == jnp.argmax(teacher_out["logits"], axis=-1)))
    metrics["with_teacher"] = jnp.sum(with_teacher)
  return new_state, metrics


def confusion_matrix(labels: jax.Array, predicted: jax.Array, mask: jax.Array,
                     num_classes: int = NUM_CLASSES) -> jax.Array:
  """[K, K] counts of (true label, prediction) over the masked examples."""
  weights = jnp.asarray(mask, jnp.float32)[:, None]
  return jnp.einsum("bi,bj->ij", jax.nn.one_hot(labels, num_classes) * weights,
                    jax.nn.one_hot(predicted, num_classes))


def eval_step(state: TrainState, batch: Mapping[str, jax.Array], teacher_variables: Any,
              spec: StepSpec) -> dict[str, jax.Array]:
  """Sums over a global batch (padding excluded) from which `summarize_eval` makes metrics."""
  labels = target_labels(batch, spec.mode)
  valid = _valid(batch, spec.mode)
  labelled = valid & (labels >= 0)
  if spec.mode == "teacher":
    out = spec.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                           batch["faces"], batch["face_mask"], train=False)
    terms = {"ce": losses.cross_entropy(out["logits"], labels, valid)}
  else:
    out = spec.model.apply({"params": state.params}, batch["logmel"], batch["logmel_mask"],
                           train=False)
    teacher_out = _teacher_outputs(spec, teacher_variables, batch)
    _, terms = _student_loss(spec, out, teacher_out, batch, labels, valid)
  predicted = jnp.argmax(out["logits"], axis=-1)
  n_labelled = jnp.sum(labelled)
  sums = {"confusion": confusion_matrix(labels, predicted, labelled, out["logits"].shape[-1]),
          "labelled": n_labelled,
          "ce": terms["ce"] * n_labelled}
  if spec.mode == "student":
    has_face = jnp.any(batch["face_mask"], axis=1)
    with_teacher = valid & has_face
    n_teacher = jnp.sum(with_teacher)
    teacher_predicted = jnp.argmax(teacher_out["logits"], axis=-1)
    face_labels = target_labels(batch, "teacher")
    if spec.class_map is not None:  # the labels are the student's own classes: fold them
      face_labels = jnp.where(face_labels >= 0,
                              jnp.asarray(spec.class_map)[jnp.maximum(face_labels, 0)], -1)
    sums.update(
        with_teacher=n_teacher, kd=terms["kd"] * n_teacher, align=terms["align"] * n_teacher,
        agree=jnp.sum(with_teacher & (predicted_fer_class(out["logits"], spec)
                                      == teacher_predicted)),
        teacher_confusion=confusion_matrix(face_labels, teacher_predicted,
                                           batch["example_mask"] & has_face & (face_labels >= 0)))
  return sums


def accuracy(confusion: np.ndarray) -> float:
  """Fraction correct; NaN without examples."""
  total = confusion.sum()
  return float(np.trace(confusion) / total) if total else math.nan


def unweighted_average_recall(confusion: np.ndarray) -> float:
  """Mean per-class recall over the classes that occur (UAR); NaN without examples."""
  support = confusion.sum(axis=1)
  present = support > 0
  if not present.any():
    return math.nan
  return float(np.mean(np.diag(confusion)[present] / support[present]))


def summarize_eval(sums: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Evaluation metrics from the summed `eval_step` outputs of a whole split."""
  ratio = lambda num, den: float(num / den) if den else math.nan
  metrics = {"accuracy": accuracy(sums["confusion"]),
             "uar": unweighted_average_recall(sums["confusion"]),
             "ce": ratio(sums["ce"], sums["labelled"])}
  if "agree" in sums:
    metrics.update(agreement=ratio(sums["agree"], sums["with_teacher"]),
                   kd=ratio(sums["kd"], sums["with_teacher"]),
                   align=ratio(sums["align"], sums["with_teacher"]),
                   teacher_accuracy=accuracy(sums["teacher_confusion"]))
  return metrics


def summarize_train(window: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
  """Train metrics averaged over the steps since the last log."""
  metrics = {k: float(np.mean([m[k] for m in window]))
             for k in window[0] if k not in ("finite", "correct", "labelled", "agree",
                                              "with_teacher")}
  total = lambda k: float(sum(m[k] for m in window))
  if total("labelled"):
    metrics["accuracy"] = total("correct") / total("labelled")
  if "agree" in window[0] and total("with_teacher"):
    metrics["agreement"] = total("agree") / total("with_teacher")
  return metrics


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
  """The TensorBoard scalars a run wrote to `workdir`: {tag: {step: value}}."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (event files only)
  scalars: dict[str, dict[int, float]] = {}
  for path in sorted(epath.Path(workdir).glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = float(
            tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value)
  return scalars


# ---------------------------------------------------------------------------------------------
# Building a run: models, teacher, checkpoints.


@dataclasses.dataclass(frozen=True)
class Trained:
  """A trained model restored from a workdir (`load_trained`).

  `model` is the Teacher (mode "teacher") or the Student; `teacher` / `teacher_variables` are the
  frozen teacher a student learned from (mode "student"), else None.
  """
  config: ml_collections.ConfigDict
  step: int
  model: nn.Module
  variables: dict[str, Any]
  teacher: Optional[nn.Module]
  teacher_variables: Optional[dict[str, Any]]


def _optimizer_spec(config: ml_collections.ConfigDict) -> OptimizerSpec:
  o = config.optimizer
  return OptimizerSpec(
      learning_rate=float(o.learning_rate), warmup_steps=int(o.warmup_steps),
      decay_steps=int(config.num_train_steps),
      end_learning_rate_factor=float(o.end_learning_rate_factor),
      weight_decay=float(o.weight_decay), b1=float(o.b1), b2=float(o.b2), eps=float(o.eps),
      grad_clip_norm=float(o.grad_clip_norm))


def label_classes(config: ml_collections.ConfigDict) -> Optional[tuple[str, ...]]:
  """The corpus's own class set the student learns (`config.data.classes`), None for the seven."""
  name = config.data.get("classes", "")
  return None if name in ("", "fer") else emotions.class_set(name)


def step_spec(config: ml_collections.ConfigDict, teacher: Optional[nn.Module]) -> StepSpec:
  classes = label_classes(config)
  class_map = None
  if config.mode == "teacher":
    model = teacher
  else:
    kwargs = _kwargs(config.student.model)
    if teacher is not None:  # the aligned head maps into the teacher's embedding space
      kwargs["teacher_dim"] = teacher_embedding_dim(teacher)
    if classes is not None:
      kwargs["num_classes"] = len(classes)
      class_map = emotions.fold_onto_fer(classes)
    model = student_lib.Student(**kwargs)
  distillation = None
  if config.mode == "student":
    loss = config.loss
    distillation = DistillationSpec(
        temperature=float(loss.temperature), kd_weight=float(loss.kd_weight),
        align_weight=float(loss.align_weight), ce_weight=float(loss.ce_weight),
        alignment=loss.alignment, nce_temperature=float(loss.nce_temperature))
  face_augment = None
  if config.mode == "teacher" and config.get("augment") is not None:
    a = config.augment
    face_augment = FaceAugmentSpec(flip=bool(a.flip), shift_px=int(a.shift_px),
                                   brightness=float(a.brightness), contrast=float(a.contrast))
  return StepSpec(mode=config.mode, model=model,
                  teacher=teacher if config.mode == "student" else None,
                  optimizer=_optimizer_spec(config), distillation=distillation,
                  class_map=class_map, face_augment=face_augment)


def teacher_embedding_dim(teacher: nn.Module) -> int:
  """The width of a Teacher's embedding, from shapes alone."""
  faces = jax.ShapeDtypeStruct((1, 1, 64, 64, 1), jnp.uint8)  # the width does not depend on it
  mask = jax.ShapeDtypeStruct((1, 1), jnp.bool_)
  out = jax.eval_shape(lambda f, m: teacher.init_with_output(jax.random.key(0), f, m)[0], faces,
                       mask)
  return out["embedding"].shape[-1]


def _abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Shapes and dtypes of `tree` (arrays or ShapeDtypeStructs) placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _best_score(config: ml_collections.ConfigDict):
  """metrics -> how good a checkpoint is by `config.best_metric`; None without evaluation."""
  if not config.data.eval_split:
    return None
  best_metric = config.best_metric
  # A metric without examples to measure it (NaN) never makes a checkpoint the best.
  return lambda metrics: (metrics[best_metric] if math.isfinite(metrics[best_metric])
                          else -math.inf)


class _CheckpointManager(ocp.CheckpointManager):
  """orbax's manager, except that a checkpoint whose metrics file cannot be parsed counts as one
  without metrics (with a warning) instead of making the whole directory fail to open."""

  def metrics(self, step: int) -> Optional[Any]:
    try:
      return super().metrics(step)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
      logging.warning("checkpoint %s: its metrics are unreadable (%s); it cannot be the best",
                      self.directory / str(step), _reason(e))
      return None


def _checkpoint_manager(workdir: epath.Path, config: ml_collections.ConfigDict,
                        read_only: bool = False) -> ocp.CheckpointManager:
  policies = [ocp.checkpoint_managers.LatestN(n=config.keep_checkpoints)]
  best_fn = _best_score(config)
  if best_fn is not None:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=best_fn, reverse=False, n=1, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      best_fn=best_fn, best_mode="max", read_only=read_only,
      # Unfinished saves of a killed run (`<step>.orbax-checkpoint-tmp`, never taken for a
      # step) are removed when a run starts.
      cleanup_tmp_directories=not read_only,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
  return _CheckpointManager(workdir / CHECKPOINT_DIR, options=options)


def _host_array(x: Any) -> np.ndarray:
  """A host copy of a replicated array, also where other processes hold some of its devices."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    local = np.asarray(x.addressable_data(0))
    if local.shape != x.shape:
      raise ValueError(f"expected a replicated array, got a shard {local.shape} of {x.shape}")
    return local
  return np.asarray(x)


def tree_digest(tree: Any) -> dict[str, str]:
  """{leaf path: SHA-256 of its dtype, shape and bytes} of a pytree of arrays and numbers."""
  digest = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = _host_array(leaf)
    sha = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    sha.update(array.tobytes())  # C order, whatever the layout
    digest[jax.tree_util.keystr(path)] = sha.hexdigest()
  return digest


def _check_digest(restored: Mapping[str, Any], saved: Mapping[str, Mapping[str, str]]) -> None:
  """Raises CheckpointError naming the first item or array that differs from its saved digest.

  orbax does not checksum array data: a garbled array file restores without an error.
  """
  for item, leaves in saved.items():
    if item not in restored:
      raise CheckpointError(f"item {item!r} is missing")
    got = tree_digest(restored[item])
    for path, expected in leaves.items():
      if got.get(path) != expected:
        raise CheckpointError(f"{item}{path} differs from the digest saved with it")
    if set(got) != set(leaves):
      raise CheckpointError(f"{item} holds other arrays than the digest saved with it")


def _restore_args(abstract_state: Any, abstract_teacher: Any,
                  digest: bool = False) -> ocp.args.Composite:
  items = {"state": ocp.args.StandardRestore(abstract_state), "data": ocp.args.JsonRestore()}
  if abstract_teacher is not None:
    items["teacher"] = ocp.args.StandardRestore(abstract_teacher)
  if digest:
    items[_DIGEST] = ocp.args.JsonRestore()
  return ocp.args.Composite(**items)


def _save_args(items: Mapping[str, Any]) -> ocp.args.Composite:
  """Checkpoint items {"state": TrainState, "data": position dict, ["teacher": variables]} ->
  orbax save arguments, with their digest."""
  args = {name: ocp.args.JsonSave(tree) if name == "data" else ocp.args.StandardSave(tree)
          for name, tree in items.items()}
  args[_DIGEST] = ocp.args.JsonSave({name: tree_digest(tree) for name, tree in items.items()})
  return ocp.args.Composite(**args)


def _reason(error: BaseException) -> str:
  """A one-line account of why a checkpoint could not be read (TensorStore's messages run long)."""
  text = str(error).strip().splitlines()
  text = text[0] if text else ""
  return f"{type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _saved_items(step_dir: epath.Path) -> set[str]:
  """The items orbax recorded saving in a checkpoint (none when its metadata is unreadable)."""
  try:
    return set(json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())["item_handlers"])
  except Exception:  # pylint: disable=broad-except  (a checkpoint damaged there fails its restore)
    return set()


def _restore_step(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
                  abstract_teacher: Any) -> dict[str, Any]:
  """Checkpoint `step`'s items, checked against its digest (checkpoints from before digests were
  saved are taken as they are; one saved with a digest that is now missing is unreadable)."""
  step_dir = epath.Path(mngr.directory) / str(step)
  has_digest = (step_dir / _DIGEST).exists()
  if not has_digest and _DIGEST in _saved_items(step_dir):
    raise CheckpointError(f"{step_dir}: the digest saved with it is missing")
  restored = dict(mngr.restore(step, args=_restore_args(abstract_state, abstract_teacher,
                                                        has_digest)))
  if has_digest:
    _check_digest(restored, restored.pop(_DIGEST))
  return restored


def _restore_first_good(mngr: ocp.CheckpointManager, steps: list[int], abstract_state: Any,
                        abstract_teacher: Any) -> tuple[int, dict[str, Any], list[int]]:
  """(step, items, unreadable steps) of the first of `steps` that restores whole; warns for each one
  that does not, and raises CheckpointError, naming each with its reason, when none does."""
  failures = []
  for step in steps:
    try:
      return step, _restore_step(mngr, step, abstract_state, abstract_teacher), [
          bad for bad, _ in failures]
    except MemoryError:
      raise  # the machine's trouble, not the checkpoint's: never set a good one aside for it
    except Exception as e:  # pylint: disable=broad-except
      # orbax and TensorStore fail on damaged files with many kinds of error (ValueError,
      # KeyError, UnicodeDecodeError, bare Exception); any of them makes the checkpoint unusable.
      failures.append((step, _reason(e)))
      logging.warning("checkpoint %s is unreadable (%s)%s", epath.Path(mngr.directory) / str(step),
                      failures[-1][1], "; trying the one before it" if step != steps[-1] else "")
  raise CheckpointError(
      f"no checkpoint in {mngr.directory} could be restored: "
      + "; ".join(f"step {step}: {reason}" for step, reason in failures)
      + ". Move the directory away to train from scratch.")


def _set_aside(workdir: epath.Path, mngr: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves unreadable checkpoints to workdir/unreadable_checkpoints/<step>[.N], so the run goes
  on from the one it restored and can save those steps anew."""
  if jax.process_index() == 0:
    aside = workdir / UNREADABLE_DIR
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target, n = aside / str(step), 0
      while target.exists():
        n += 1
        target = aside / f"{step}.{n}"
      (epath.Path(mngr.directory) / str(step)).rename(target)
      logging.warning("set checkpoint %d aside in %s", step, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("kd_mh checkpoints set aside")
  mngr.reload()


def _restore_order(mngr: ocp.CheckpointManager, config: ml_collections.ConfigDict,
                   latest: bool) -> list[int]:
  """The steps to try, latest first, or with `latest` False and an evaluation split: best first
  (ties: the later), then those without metrics, latest first."""
  steps = sorted(mngr.all_steps(), reverse=True)
  score = _best_score(config)
  if latest or score is None:
    return steps
  metrics = {step: mngr.metrics(step) for step in steps}
  ranked = sorted((step for step in steps if metrics[step] is not None),
                  key=lambda step: (score(metrics[step]), step), reverse=True)
  return ranked + [step for step in steps if metrics[step] is None]


def load_teacher(config: ml_collections.ConfigDict, inputs: Inputs, rng: jax.Array,
                 ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
  """(Teacher module, its variables, its module settings) per `config.teacher.init`.

  "fer2013": the pretrained FER2013 backbone (`kd_mh.models.pretrained`); "random": initialised
  from `rng`; anything else: the workdir of a teacher run (its best checkpoint and settings).
  """
  source = config.teacher.init
  if source not in TEACHER_INITS:
    trained = load_teacher_run(source)
    return trained.model, trained.variables, _kwargs(trained.config.teacher.model)
  kwargs = _kwargs(config.teacher.model)
  teacher = teacher_lib.Teacher(**kwargs)
  if source == "fer2013":
    return teacher, pretrained.init_teacher_variables(teacher, rng), kwargs
  # Static module and shapes: compiled once per process, however many runs start.
  return teacher, jax.jit(init_teacher, static_argnums=(0, 1))(teacher, inputs, rng), kwargs


def model_inputs(config: ml_collections.ConfigDict, split: input_pipeline.Split,
                 face_split: Optional[input_pipeline.Split] = None) -> Inputs:
  """The input shapes of a run: lengths from the config, face and mel sizes from the corpus (the
  face size from `face_split`, the corpus faces are borrowed from, when given)."""
  faces = face_split or split
  return Inputs(max_frames=int(config.data.max_frames),
                face_shape=records.face_shape(faces.features, faces.metadata),
                max_logmel_frames=int(config.data.max_logmel_frames),
                n_mels=int(records.n_mels(split.features)))


def _open_run(workdir: epath.Path) -> tuple[ml_collections.ConfigDict, ocp.CheckpointManager]:
  """The config and (read-only) checkpoints of the run in `workdir`."""
  config_path = workdir / CONFIG_FILE
  if not config_path.exists():
    raise ValueError(f"{workdir} holds no {CONFIG_FILE}: not a kd_mh training workdir")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  return config, _checkpoint_manager(workdir, config, read_only=True)


def load_trained(workdir: str, step: Optional[int] = None, latest: bool = False) -> Trained:
  """The model of a run in `workdir`: its best checkpoint (or the latest without evaluation), its
  latest with `latest`, or checkpoint `step`.

  A best or latest checkpoint that does not read back whole is passed over, with a warning, for
  the next best or the one before it; CheckpointError when none (or `step`) is readable.
  """
  workdir = epath.Path(workdir)
  config, mngr = _open_run(workdir)
  inputs = Inputs(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in config.inputs.to_dict().items()})
  teacher = (teacher_lib.Teacher(**_kwargs(config.teacher.model))
             if config.mode != "student_supervised" else None)
  spec = step_spec(config, teacher)
  if step is None:
    steps = _restore_order(mngr, config, latest)
  elif step in mngr.all_steps():
    steps = [step]
  else:
    raise ValueError(f"{workdir}: no checkpoint {step} (it has {sorted(mngr.all_steps())})")
  if not steps:
    raise ValueError(f"{workdir}: no checkpoint")
  sharding = parallel.replicated(parallel.make_mesh())
  key = jax.random.PRNGKey(0)
  abstract_state = _abstract(jax.eval_shape(
      lambda k: create_state(spec, init_variables(spec, inputs, k), k), key), sharding)
  abstract_teacher = None
  if config.mode == "student":
    abstract_teacher = _abstract(jax.eval_shape(
        lambda k: init_teacher(teacher, inputs, k), key), sharding)
  step, restored, unreadable = _restore_first_good(mngr, steps, abstract_state, abstract_teacher)
  if unreadable:
    logging.warning("%s: using checkpoint %d instead of the unreadable %s", workdir, step,
                    ", ".join(map(str, unreadable)))
  state = restored["state"]
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return Trained(config=config, step=int(step), model=spec.model, variables=variables,
                 teacher=spec.teacher, teacher_variables=restored.get("teacher"))


def load_teacher_run(workdir: str, step: Optional[int] = None) -> Trained:
  """A teacher run (`load_trained`), refusing runs of another mode."""
  trained = load_trained(workdir, step)
  if trained.config.mode != "teacher":
    raise ValueError(f"{workdir} is a {trained.config.mode!r} run, not a teacher run")
  return trained


def teacher_source(init: str) -> tuple[str, int]:
  """The teacher `config.teacher.init` names, as a corpus stored as embeddings records the one
  that made it: (init, -1) for "fer2013" / "random", else (the teacher run's absolute workdir,
  the checkpoint `load_trained` restores from it)."""
  if init in TEACHER_INITS:
    return init, -1
  workdir = epath.Path(init).absolute()
  config, mngr = _open_run(workdir)
  steps = _restore_order(mngr, config, latest=False)  # load_trained's order: best first
  mngr.close()
  if not steps:
    raise ValueError(f"{workdir}: no checkpoint")
  return str(workdir), int(steps[0])


def check_face_store(config: ml_collections.ConfigDict, face_split: input_pipeline.Split) -> None:
  """Refuses a run that cannot use the faces of `face_split` as they are stored.

  A corpus stored as embeddings (`kd-mh prep --store=embeddings`) holds the frame outputs of one
  teacher and no pixels: a teacher run cannot be fine-tuned or evaluated on it, and a student can
  only learn from (or be evaluated with) that very teacher, whose frozen pooling then applies to
  the stored frame outputs.
  """
  if records.store(face_split.features) != "embeddings":
    return
  made_by = (face_split.metadata.get("teacher"), face_split.metadata.get("teacher_step"))
  if config.mode == "teacher":
    raise ValueError(f"{face_split.name} holds no face pixels (stored as embeddings of teacher "
                     f"{made_by[0]}): a teacher run (fine-tuned or evaluated) needs a corpus "
                     "prepared with `kd-mh prep --store=pixels`")
  if config.mode != "student":
    return
  init = config.teacher.init
  wanted = teacher_source(init)
  if wanted != made_by:
    raise ValueError(f"config.teacher.init={init!r} is teacher {wanted[0]} (step "
                     f"{wanted[1]}), but the frame outputs of {face_split.name} were made by "
                     f"teacher {made_by[0]} (step {made_by[1]}); train with that teacher or "
                     "prepare the corpus again with this one (`kd-mh prep --teacher_workdir`)")


def _validate(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the field, on settings the run could only trip over later."""
  if config.mode not in MODES:
    raise ValueError(f"config.mode must be one of {MODES}, got {config.mode!r}")
  for field in ("num_train_steps", "batch_size", "eval_batch_size", "log_every_steps",
                "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if int(config[field]) < 1:
      raise ValueError(f"config.{field} must be >= 1, got {config[field]}")
  if config.stop_after_steps < 0:
    raise ValueError(f"config.stop_after_steps must be >= 0, got {config.stop_after_steps}")
  if config.data.eval_split and config.best_metric not in _EVAL_METRICS[config.mode]:
    raise ValueError(f"config.best_metric {config.best_metric!r} is not measured in mode "
                     f"{config.mode!r}: one of {_EVAL_METRICS[config.mode]}")
  if config.mode == "student" and config.loss.alignment not in ("cosine", "info_nce"):
    raise ValueError(f"config.loss.alignment must be 'cosine' or 'info_nce', got "
                     f"{config.loss.alignment!r}")
  if config.mode == "teacher" and label_classes(config) is not None:
    raise ValueError(f"config.data.classes={config.data.classes!r}: the teacher learns the seven "
                     "FER2013 emotions; other class sets are for the speech student")
  if config.mode == "teacher" and config.get("augment") is not None:
    for field in ("shift_px", "brightness", "contrast"):
      if not config.augment[field] >= 0:
        raise ValueError(f"config.augment.{field} must be >= 0, got {config.augment[field]}")
    if not config.augment.brightness <= 1 or not config.augment.contrast < 1:
      raise ValueError("config.augment.brightness must be <= 1 and config.augment.contrast < 1")
  if config.mode == "teacher" and _pair_faces(config):
    raise ValueError("config.data.pair_faces pairs speech with borrowed faces; the teacher "
                     "trains on a corpus's own faces")


# ---------------------------------------------------------------------------------------------
# The loop.


def _pair_faces(config: ml_collections.ConfigDict) -> Optional[ml_collections.ConfigDict]:
  """The face corpus to borrow faces from (`config.data.pair_faces`), or None."""
  pair = config.data.get("pair_faces")
  return pair if pair is not None and pair.name else None


def _open_splits(config: ml_collections.ConfigDict):
  """(train split, eval split or None, face splits to pair them with or None)."""
  data = config.data
  train = input_pipeline.open_split(data.data_dir, data.name, data.train_split)
  evaluation = (input_pipeline.open_split(data.data_dir, data.name, data.eval_split)
                if data.eval_split else None)
  pair = _pair_faces(config)
  pair_train = pair_eval = None
  if pair:
    pair_train = input_pipeline.open_split(pair.data_dir, pair.name, pair.train_split)
    if evaluation is not None:
      pair_eval = input_pipeline.open_split(pair.data_dir, pair.name, pair.eval_split)
  return train, evaluation, pair_train, pair_eval


def _check_finite(window: list[Mapping[str, np.ndarray]], first_step: int,
                  mngr: ocp.CheckpointManager) -> None:
  for offset, metrics in enumerate(window):
    if not metrics["finite"]:
      mngr.wait_until_finished()
      values = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items()
                         if k in ("loss", "kd", "align", "ce", "grad_norm"))
      last = mngr.latest_step()
      raise NonFiniteError(
          f"step {first_step + offset + 1}: the loss, gradients or update are not finite "
          f"({values}); the step was not applied and training stops. "
          + (f"The last good checkpoint is step {last}." if last is not None
             else "No checkpoint was written yet.")
          + " Lower config.optimizer.learning_rate or check the data.")


def evaluate(p_eval, state: TrainState, teacher_variables: Any, split: input_pipeline.Split,
             config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
             pair_with: Optional[input_pipeline.Split] = None) -> dict[str, float]:
  """Metrics of `state` on every example of `split` (the last batch padded, nothing dropped)."""
  batches = input_pipeline.Batches(
      split, batch_size=config.eval_batch_size, max_frames=config.data.max_frames,
      max_logmel_frames=config.data.max_logmel_frames, seed=config.seed, train=False,
      pair_with=pair_with, process_index=jax.process_index(),
      process_count=jax.process_count(), num_parallel_calls=config.data.num_parallel_calls,
      classes=label_classes(config))
  totals = None
  for local in batches:
    sums = p_eval(state, parallel.global_batch(local, mesh), teacher_variables)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return summarize_eval(jax.device_get(totals))


def jit_steps(spec: StepSpec, mesh: jax.sharding.Mesh):
  """`train_step` and `eval_step` jitted for the mesh, as functions of (state, global batch,
  teacher variables): the state and teacher replicated, the batch sharded, the state donated.

  `spec` is static and hashable, so every call with an equal spec (a resumed or repeated run in
  the same process) reuses the compiled steps.
  """
  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  p_train = jax.jit(train_step, static_argnums=3, donate_argnums=0,
                    in_shardings=(repl, sharded, repl), out_shardings=(repl, repl))
  p_eval = jax.jit(eval_step, static_argnums=3, in_shardings=(repl, sharded, repl),
                   out_shardings=repl)
  return (lambda state, batch, teacher: p_train(state, batch, teacher, spec),
          lambda state, batch, teacher: p_eval(state, batch, teacher, spec))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config` in `workdir` (resuming from its latest checkpoint).

  Returns:
    {"step": the last step, "train": the last logged train metrics, "eval": the last evaluation's
    metrics} (empty dicts when there was nothing to log).
  """
  _validate(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  local_batch = parallel.local_batch_size(config.batch_size, mesh)
  parallel.local_batch_size(config.eval_batch_size, mesh)  # fails fast when it does not divide
  repl = parallel.replicated(mesh)
  key = jax.random.PRNGKey(config.seed)
  init_key, teacher_key, dropout_key = jax.random.split(key, 3)

  train_split, eval_split, pair_train, pair_eval = _open_splits(config)
  check_face_store(config, pair_train or train_split)
  inputs = model_inputs(config, train_split, pair_train)
  logging.info("data: %s %s%s; %d devices, %d per process", train_split.name,
               input_pipeline.example_count(train_split),
               f", eval {eval_split.name} {input_pipeline.example_count(eval_split)}"
               if eval_split else "", mesh.devices.size, local_batch)

  # Models. The teacher is either trained (mode "teacher") or frozen (mode "student").
  teacher = teacher_variables = None
  if config.mode != "student_supervised":
    teacher, teacher_variables, teacher_kwargs = load_teacher(config, inputs, teacher_key)
  spec = step_spec(config, teacher)

  # Shapes first, then the state: restored from the latest checkpoint or freshly initialised.
  abstract_state = _abstract(jax.eval_shape(
      lambda k: create_state(spec, init_variables(spec, inputs, k), k), init_key), repl)
  abstract_teacher = (_abstract(teacher_variables, repl) if config.mode == "student" else None)
  mngr = _checkpoint_manager(workdir, config)
  try:
    position = input_pipeline.Position()
    if mngr.latest_step() is not None:
      _, restored, unreadable = _restore_first_good(
          mngr, sorted(mngr.all_steps(), reverse=True), abstract_state, abstract_teacher)
      if unreadable:
        _set_aside(workdir, mngr, unreadable)
      state, position = restored["state"], input_pipeline.Position.from_dict(restored["data"])
      if abstract_teacher is not None:
        teacher_variables = restored["teacher"]
      logging.info("resumed from %s at step %d (data epoch %d, batch %d)", mngr.directory,
                   int(state.step), position.epoch, position.batch)
    else:
      if config.mode == "teacher":
        variables = teacher_variables  # fine-tuning starts from the pretrained (or given) teacher
      else:
        variables = jax.jit(init_variables, static_argnums=(0, 1))(spec, inputs, init_key)
      state = jax.jit(create_state, static_argnums=0, out_shardings=repl)(spec, variables,
                                                                           dropout_key)
    if config.mode == "student":
      teacher_variables = parallel.replicate(teacher_variables, mesh)
    else:
      teacher_variables = {}
    n_params = sum(np.size(p) for p in jax.tree.leaves(abstract_state.params))
    logging.info("mode %s: %s with %d parameters", config.mode, type(spec.model).__name__, n_params)

    if jax.process_index() == 0:
      saved = ml_collections.ConfigDict(config.to_dict())
      if config.mode != "student_supervised":
        saved.teacher.model = teacher_kwargs  # what the teacher really is (e.g. from a workdir)
      saved.inputs = dataclasses.asdict(inputs)
      # Whole or not at all, so that a run killed here leaves the previous config.json readable.
      partial = workdir / f"{CONFIG_FILE}.tmp"
      partial.write_text(saved.to_json(indent=2))
      partial.replace(workdir / CONFIG_FILE)

    p_train_step, p_eval_step = jit_steps(spec, mesh)

    writer = (metric_writers.SummaryWriter(str(workdir)) if jax.process_index() == 0
              else metric_writers.MultiWriter([]))
    schedule = spec.optimizer.schedule()
    batches = input_pipeline.Batches(
        train_split, batch_size=config.batch_size, max_frames=config.data.max_frames,
        max_logmel_frames=config.data.max_logmel_frames, seed=config.seed, train=True,
        position=position, pair_with=pair_train, process_index=jax.process_index(),
        process_count=jax.process_count(), num_parallel_calls=config.data.num_parallel_calls,
        classes=label_classes(config))

    start = int(state.step)
    end = config.num_train_steps
    if config.stop_after_steps:
      end = min(end, config.stop_after_steps)
    result: dict[str, Any] = {"step": start, "train": {}, "eval": {}}
    window, window_start, window_time = [], start, time.time()
    for step in range(start + 1, end + 1):
      state, metrics = p_train_step(state, parallel.global_batch(next(batches), mesh),
                                    teacher_variables)
      window.append(metrics)
      is_last = step == end
      do_save = step % config.checkpoint_every_steps == 0 or is_last
      # Every checkpoint carries its validation metrics, so the best one can be kept.
      do_eval = eval_split is not None and (step % config.eval_every_steps == 0 or do_save)
      if step % config.log_every_steps == 0 or do_eval or do_save:
        window = jax.device_get(window)
        _check_finite(window, window_start, mngr)
        elapsed = time.time() - window_time
        train_metrics = summarize_train(window)
        train_metrics.update(learning_rate=float(schedule(step - 1)),
                             steps_per_second=len(window) / max(elapsed, 1e-9))
        writer.write_scalars(step, {f"train/{k}": v for k, v in train_metrics.items()})
        eta = (end - step) / train_metrics["steps_per_second"]
        logging.info("step %d/%d: %s (%.2f steps/s, %.0f s left)", step, end,
                     ", ".join(f"{k} {v:.4f}" for k, v in train_metrics.items()
                               if k not in ("steps_per_second",)),
                     train_metrics["steps_per_second"], eta)
        result.update(step=step, train=train_metrics)
        window, window_start = [], step
      eval_metrics = None
      if do_eval:
        eval_metrics = evaluate(p_eval_step, state, teacher_variables, eval_split, config, mesh,
                                pair_eval)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        logging.info("eval at step %d: %s", step,
                     ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
        result["eval"] = eval_metrics
      if do_save:
        items = {"state": state, "data": batches.position.to_dict()}
        if config.mode == "student":
          items["teacher"] = teacher_variables
        mngr.save(step, args=_save_args(items), metrics=eval_metrics)
      window_time = time.time() if not window else window_time
    mngr.wait_until_finished()
    writer.flush()
    return result
  finally:
    # Also on an error (an unreadable checkpoint, the NaN guard): stops orbax's background
    # threads, which otherwise outlive the run in a long-lived process.
    mngr.close()
