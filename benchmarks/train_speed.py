"""JAX against PyTorch on this CPU: train-step speed, jit compile time, inference real-time factor.

  python benchmarks/train_speed.py [--threads=2] [--steps=8] [--batch_size=32] [--quick]

Needs PyTorch, which kd_mh itself does not depend on: `pip install torch==2.13.0` (CPU wheel).

Models, at the shapes of the default configs:
  student  configs/student_kd.py's Student on log-mel [B, 400, 64] with prefix masks
  teacher  the mini-Xception Teacher of configs/student_kd.py (mean pooling, frozen BatchNorm
           statistics) on [B, 16, 64, 64, 1] uint8 faces with frame masks
Train steps (rows):
  student_supervised  the student, cross-entropy (configs/student_supervised.py)
  student             the student distilled from the frozen teacher, whose forward pass is part of
                      the step (configs/student_kd.py: what a distillation run costs)
  teacher             the teacher fine-tuned with cross-entropy (configs/teacher_finetune.py)

JAX runs the real `kd_mh.train.train_step` under `jax.jit` (one device), once with XLA's default
CPU flags and once with `--xla_cpu_experimental_ynn_fusion_type=` (XLA CPU's YNNPACK fusion off).
XLA_FLAGS is read when JAX starts, so every configuration runs in a child process of its own.
PyTorch runs the port below (same layers, sizes, masking and losses; the GRU over packed
sequences; SpecAugment drawing PyTorch's random numbers), eager and under torch.compile, with
AdamW and global-norm clipping at the configs' settings (a constant learning rate: the schedule
does not change the cost). Both frameworks start
from the same weights (JAX's initialisation, copied into the port) and see the same generated
batches; the port is checked against JAX by the largest logit difference on the first batch.

Timing: `--warmup` steps, then the median of `--steps` steps; each child is pinned to the first
`--threads` cores before it starts (so XLA sizes its thread pool to them) and PyTorch gets as many
threads. Compile time is JAX's `lower` + `compile` of each step in a fresh process; for
torch.compile the first step's time is shown instead. Inference: the student's eval forward
pinned to one core (`--xla_cpu_multi_thread_eigen=false`, one PyTorch thread) on `--batch_size`
utterances and on one, as seconds of compute per second of audio (4 s per 400-frame utterance,
the log-mel hop being 10 ms).
Goals: JAX >= 1.5x PyTorch examples/s, jit compile <= 20 s, inference RTF <= 0.005.
The last line of output is the whole result as JSON.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags

try:
  import torch
except ImportError as error:
  raise SystemExit(
      "benchmarks/train_speed.py compares against PyTorch, which kd_mh does not depend on.\n"
      "Install the CPU wheel into this environment first:  pip install torch==2.13.0") from error
import torch.nn.functional as F
from torch import nn as tnn
from torch.nn.utils import rnn as trnn

import flax
import jax
import jax.numpy as jnp
import numpy as np

from kd_mh import train
from kd_mh.models import student as student_lib
from kd_mh.models import teacher as teacher_lib

MODES = ("student_supervised", "student", "teacher")
MODE_CONFIGS = {"student_supervised": "student_supervised", "student": "student_kd",
                "teacher": "teacher_finetune"}
ROW_NAMES = {"student_supervised": "student, CE", "student": "student, KD + teacher fwd",
             "teacher": "teacher, CE"}
MATMUL_SIZE = 2048  # the dense matmul that gives this CPU's reference arithmetic rate
XLA_VARIANTS = {"default": "", "ynn_off": "--xla_cpu_experimental_ynn_fusion_type="}
HOP_S = 0.010  # log-mel hop (kd_mh.records: 10 ms)
FACE_SHAPE = (64, 64, 1)
GOAL_SPEEDUP = 1.5
GOAL_COMPILE_S = 20.0
GOAL_RTF = 0.005
REFERENCE_FILE = "jax_reference.npz"
NOISY_SPREAD = 1.5  # slowest / fastest timed step beyond which a row's median is flagged

_THREADS = flags.DEFINE_integer("threads", 2, "threads (and cores) of both frameworks")
_STEPS = flags.DEFINE_integer("steps", 6, "timed train steps (the median is reported)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed train steps first")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "examples per train step")
_LOGMEL_FRAMES = flags.DEFINE_integer("logmel_frames", 400, "log-mel frames per utterance")
_N_MELS = flags.DEFINE_integer("n_mels", 64, "mel bins")
_FACE_FRAMES = flags.DEFINE_integer("face_frames", 16, "face frames per clip")
_INFER_STEPS = flags.DEFINE_integer("infer_steps", 10, "timed inference calls per batch size")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", True, "also time torch.compile")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the weights and the generated batches")
_QUICK = flags.DEFINE_bool("quick", False, "tiny shapes and few steps: a smoke run of the whole "
                           "benchmark (numbers are not meaningful)")
_WORKER = flags.DEFINE_enum("worker", None, ["jax_train", "torch_train", "jax_infer",
                                             "torch_infer"], "internal: run one child job")
_VARIANT = flags.DEFINE_enum("variant", "default", list(XLA_VARIANTS),
                             "internal: the XLA flag set of a JAX child")
_EXCHANGE = flags.DEFINE_string("exchange", None, "internal: the children's shared directory")

_PASSED_FLAGS = (_THREADS, _STEPS, _WARMUP, _BATCH_SIZE, _LOGMEL_FRAMES, _N_MELS, _FACE_FRAMES,
                 _INFER_STEPS, _TORCH_COMPILE, _SEED)


@dataclasses.dataclass(frozen=True)
class Shapes:
  batch_size: int
  logmel_frames: int
  n_mels: int
  face_frames: int
  steps: int
  warmup: int
  infer_steps: int


def shapes_from_flags() -> Shapes:
  if _QUICK.value:
    return Shapes(batch_size=4, logmel_frames=96, n_mels=_N_MELS.value, face_frames=2, steps=2,
                  warmup=1, infer_steps=2)
  return Shapes(batch_size=_BATCH_SIZE.value, logmel_frames=_LOGMEL_FRAMES.value,
                n_mels=_N_MELS.value, face_frames=_FACE_FRAMES.value, steps=_STEPS.value,
                warmup=_WARMUP.value, infer_steps=_INFER_STEPS.value)


# ---------------------------------------------------------------------------------------------
# Inputs shared by both frameworks.


def make_batch(index: int, shapes: Shapes, seed: int) -> dict[str, np.ndarray]:
  """Batch `index` of a reproducible stream: the same arrays in every process for the same seed.

  Log-mels are Gaussian around a typical log energy with random prefix lengths (at least half the
  frames), clips have 1..face_frames valid face frames, every example is real and labelled.
  """
  rng = np.random.default_rng([seed, index])
  b, f, t = shapes.batch_size, shapes.logmel_frames, shapes.face_frames
  logmel_len = rng.integers((f + 1) // 2, f + 1, size=b)
  face_len = rng.integers(1, t + 1, size=b)
  label = rng.integers(0, 7, size=b).astype(np.int32)
  return {
      "logmel": rng.normal(-4.0, 2.0, size=(b, f, shapes.n_mels)).astype(np.float32),
      "logmel_mask": np.arange(f)[None, :] < logmel_len[:, None],
      "faces": rng.integers(0, 256, size=(b, t) + FACE_SHAPE, dtype=np.uint8),
      "face_mask": np.arange(t)[None, :] < face_len[:, None],
      "label": label, "face_label": label, "voice_label": label,
      "example_mask": np.ones(b, bool),
  }


def inference_batch(batch_size: int, shapes: Shapes, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`batch_size` whole utterances (no padding), so every frame counts as audio."""
  rng = np.random.default_rng([seed, 10_000 + batch_size])
  logmel = rng.normal(-4.0, 2.0, size=(batch_size, shapes.logmel_frames, shapes.n_mels))
  return logmel.astype(np.float32), np.ones((batch_size, shapes.logmel_frames), bool)


def load_config(mode: str):
  return train.load_config(MODE_CONFIGS[mode])


def teacher_module() -> teacher_lib.Teacher:
  """The frozen teacher of configs/student_kd.py (the teacher row trains the same model)."""
  return teacher_lib.Teacher(**load_config("student").teacher.model.to_dict())


def model_inputs(shapes: Shapes) -> train.Inputs:
  return train.Inputs(max_frames=shapes.face_frames, face_shape=FACE_SHAPE,
                      max_logmel_frames=shapes.logmel_frames, n_mels=shapes.n_mels)


def median_times(fn: Callable[[int], Any], warmup: int, steps: int) -> tuple[float, list[float]]:
  """(median seconds, all seconds) of `fn(i)` over `steps` calls after `warmup` untimed ones."""
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    fn(i)
    times.append(time.perf_counter() - start)
  return statistics.median(times[warmup:]), times


def matmul_gflop_s(matmul: Callable[[], Any], n: int) -> float:
  """This CPU's dense float32 matmul rate in one framework: the best of a few [n, n] products."""
  seconds = min(median_times(lambda i: matmul(), 1, 5)[1][1:])
  return 2 * n ** 3 / seconds / 1e9


def _flat(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


def _sub(flat: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# JAX children: the real train step and the student's inference.


def jax_train(shapes: Shapes, seed: int, exchange: pathlib.Path, variant: str) -> dict[str, Any]:
  """Compile time and step times of every mode; the default variant also writes the reference
  weights and logits the PyTorch port is loaded with and checked against."""
  key = jax.random.key(seed)
  inputs = model_inputs(shapes)
  teacher = teacher_module()
  teacher_variables = jax.jit(train.init_teacher, static_argnums=(0, 1))(teacher, inputs, key)
  batches = [jax.device_put(make_batch(i, shapes, seed))
             for i in range(shapes.warmup + shapes.steps)]
  results, reference, student_variables = {}, {}, {}
  for mode in MODES:
    spec = train.step_spec(load_config(mode), teacher)
    if mode == "teacher":
      # Fine-tuning starts from the (here random) teacher; a copy, as the step donates its state.
      variables = jax.tree.map(jnp.copy, teacher_variables)
    elif spec.model in student_variables:  # the same Student in both student modes
      variables = jax.tree.map(jnp.copy, student_variables[spec.model])
    else:
      variables = jax.jit(train.init_variables, static_argnums=(0, 1))(spec, inputs, key)
      student_variables[spec.model] = variables
    if mode != "student":  # the KD student starts from the same weights
      name = "teacher" if mode == "teacher" else "student"
      reference.update({f"{name}/{k}": v for k, v in _flat(variables).items()})
      out = spec.model.apply(variables, *((batches[0]["faces"], batches[0]["face_mask"])
                                          if mode == "teacher" else
                                          (batches[0]["logmel"], batches[0]["logmel_mask"])))
      reference[f"{name}_logits"] = np.asarray(out["logits"])
    state = jax.jit(train.create_state, static_argnums=0)(spec, variables, key)
    frozen = teacher_variables if mode == "student" else {}
    jitted = jax.jit(train.train_step, static_argnums=3, donate_argnums=0)
    start = time.perf_counter()
    lowered = jitted.lower(state, batches[0], frozen, spec)
    lowered_s = time.perf_counter() - start
    step = lowered.compile()
    compile_s = time.perf_counter() - start
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    metrics = {}

    def run(i, step=step, frozen=frozen):
      nonlocal state, metrics
      state, metrics = step(state, batches[i], frozen)
      jax.block_until_ready((state, metrics))

    median_s, times = median_times(run, shapes.warmup, shapes.steps)
    results[mode] = {"compile_s": compile_s, "trace_lower_s": lowered_s, "step_s": median_s,
                     "examples_per_s": shapes.batch_size / median_s, "times_s": times,
                     "last_loss": float(metrics["loss"]), "finite": bool(metrics["finite"]),
                     "gflop_per_step": float((cost or {}).get("flops", math.nan)) / 1e9}
  a = jnp.ones((MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  results["matmul_gflop_s"] = matmul_gflop_s(lambda: matmul(a).block_until_ready(), MATMUL_SIZE)
  if variant == "default":
    np.savez(exchange / REFERENCE_FILE, **reference)
  return results


def jax_infer(shapes: Shapes, seed: int) -> dict[str, Any]:
  """The student's eval forward (jitted) on one core: seconds per second of audio."""
  spec = train.step_spec(load_config("student_supervised"), None)
  variables = jax.jit(train.init_variables, static_argnums=(0, 1))(
      spec, model_inputs(shapes), jax.random.key(seed))
  forward = jax.jit(lambda v, x, m: spec.model.apply(v, x, m)["logits"])
  results = {}
  for n in sorted({shapes.batch_size, 1}):
    logmel, mask = jax.device_put(inference_batch(n, shapes, seed))
    median_s, _ = median_times(
        lambda i: forward(variables, logmel, mask).block_until_ready(), 1, shapes.infer_steps)
    results[f"batch{n}"] = {"call_s": median_s,
                            "rtf": median_s / (n * shapes.logmel_frames * HOP_S)}
  return results


# ---------------------------------------------------------------------------------------------
# The PyTorch port. Module and parameter names follow the Flax models', so `flax_to_torch` maps
# every variable by name; tensors are NCHW ([B, C, time, mel] for the student).


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of XLA's SAME for one spatial dimension."""
  out = -(-size // stride)
  total = max((out - 1) * stride + window - size, 0)
  return total // 2, total - total // 2


def same_max_pool(x: torch.Tensor, window: int, stride: int) -> torch.Tensor:
  """Max pooling with SAME padding by -inf, as `flax.linen.max_pool(padding="SAME")`."""
  (top, bottom), (left, right) = (same_pads(x.shape[2], window, stride),
                                  same_pads(x.shape[3], window, stride))
  x = F.pad(x, (left, right, top, bottom), value=-math.inf)
  return F.max_pool2d(x, window, stride)


def normalize_logmel(logmel: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
  """`kd_mh.models.student.normalize_logmel` (one mean and variance over all bins)."""
  m = mask[:, :, None]
  count = torch.clamp(m.sum(dim=(1, 2), keepdim=True) * logmel.shape[2], min=1)
  mean = torch.where(m, logmel, 0.0).sum(dim=(1, 2), keepdim=True) / count
  var = torch.where(m, (logmel - mean) ** 2, 0.0).sum(dim=(1, 2), keepdim=True) / count
  return torch.where(m, (logmel - mean) * torch.rsqrt(var + eps), 0.0)


def spec_augment(x: torch.Tensor, mask: torch.Tensor, time_masks: int, time_width: int,
                 mel_masks: int, mel_width: int) -> torch.Tensor:
  """`kd_mh.models.student.spec_augment` (the same band distribution, PyTorch's random numbers)."""
  b, f, m = x.shape
  keep = torch.ones(b, f, m, dtype=torch.bool)
  lengths = torch.clamp(mask.sum(dim=1), min=1)
  for axis, count, width, size in ((1, time_masks, time_width, f), (2, mel_masks, mel_width, m)):
    for _ in range(count):
      w = torch.randint(0, width + 1, (b,))
      extent = lengths if axis == 1 else torch.full((b,), m)
      start = (torch.rand(b) * torch.clamp(extent - w, min=1)).long()
      pos = torch.arange(size)[None, :]
      band = (pos >= start[:, None]) & (pos < (start + w)[:, None])
      keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
  return torch.where(keep, x, 0.0)


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
  b, t = mask.shape
  pad = -t % factor
  return F.pad(mask, (0, pad)).reshape(b, (t + pad) // factor, factor).any(dim=2)


class MaskedGroupNorm(tnn.Module):
  """Flax GroupNorm with a mask: statistics over the masked positions, applied everywhere."""

  def __init__(self, groups: int, channels: int, eps: float = 1e-6):
    super().__init__()
    self.groups, self.eps = groups, eps
    self.weight = tnn.Parameter(torch.ones(channels))
    self.bias = tnn.Parameter(torch.zeros(channels))

  def forward(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """x [B, C, T, M]; frames [B, T] (bool) the frames the statistics come from."""
    b, c, t, m = x.shape
    xg = x.reshape(b, self.groups, c // self.groups, t, m)
    w = frames.to(x.dtype).reshape(b, 1, 1, t, 1)
    count = torch.clamp(w.sum(dim=(2, 3, 4), keepdim=True) * (c // self.groups) * m, min=1)
    mean = (xg * w).sum(dim=(2, 3, 4), keepdim=True) / count
    mean_sq = (xg * xg * w).sum(dim=(2, 3, 4), keepdim=True) / count
    var = torch.clamp(mean_sq - mean * mean, min=0)  # Flax's fast variance
    y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(b, c, t, m)
    return y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


class ConvBlock(tnn.Module):
  """`kd_mh.models.student.ConvBlock`."""

  def __init__(self, in_channels: int, features: int, pool: tuple[int, int], groups: int):
    super().__init__()
    self.pool = pool
    self.conv1 = tnn.Conv2d(in_channels, features, 3, padding=1, bias=False)
    self.norm1 = MaskedGroupNorm(groups, features)
    self.conv2 = tnn.Conv2d(features, features, 3, padding=1, bias=False)
    self.norm2 = MaskedGroupNorm(groups, features)

  def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    frames = mask[:, None, :, None]
    norm_frames = mask | ~mask.any(dim=1, keepdim=True)
    for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
      x = torch.relu(norm(conv(torch.where(frames, x, 0.0)), norm_frames))
    x = F.max_pool2d(torch.where(frames, x, 0.0), self.pool, self.pool, ceil_mode=True)
    return x, downsample_mask(mask, self.pool[0])


class AttentionPool(tnn.Module):
  """`kd_mh.models.pooling.AttentionPool`."""

  def __init__(self, features: int, hidden: int):
    super().__init__()
    self.hidden = tnn.Linear(features, hidden)
    self.score = tnn.Linear(hidden, 1, bias=False)

  def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = self.score(torch.tanh(self.hidden(x)))[..., 0]
    scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
    scores = scores - scores.max(dim=1, keepdim=True).values.detach()
    weights = torch.where(mask, torch.exp(scores), 0.0)
    weights = weights / torch.clamp(weights.sum(dim=1, keepdim=True),
                                    min=torch.finfo(scores.dtype).tiny)
    return torch.einsum("bt,btd->bd", weights, torch.where((weights > 0)[..., None], x, 0.0))


class Student(tnn.Module):
  """`kd_mh.models.student.Student` with a GRU (its default), built from the Flax module."""

  def __init__(self, model: student_lib.Student, n_mels: int):
    super().__init__()
    if model.rnn_cell != "gru" or model.norm_per_bin:
      raise ValueError("the PyTorch port covers the GRU student with all-bin normalisation")
    self.dropout_rate = model.dropout_rate
    self.augment = (model.time_masks, model.time_mask_width, model.mel_masks,
                    model.mel_mask_width)
    channels, mels, blocks = 1, n_mels, []
    for features, t_pool, m_pool in zip(model.conv_features, model.time_pool, model.mel_pool):
      blocks.append(ConvBlock(channels, features, (t_pool, m_pool), model.norm_groups))
      channels, mels = features, -(-mels // m_pool)
    self.blocks = tnn.ModuleList(blocks)
    self.frame_proj = tnn.Linear(mels * channels, model.rnn_hidden)
    self.rnn = tnn.GRU(model.rnn_hidden, model.rnn_hidden, num_layers=model.rnn_layers,
                       batch_first=True, bidirectional=True)
    self.attention = AttentionPool(2 * model.rnn_hidden, model.attention_hidden)
    self.embedding = tnn.Linear(2 * model.rnn_hidden, model.embed_dim)
    self.head = tnn.Linear(model.embed_dim, model.num_classes)
    self.align = tnn.Linear(model.embed_dim, model.teacher_dim)

  def forward(self, logmel: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    x = normalize_logmel(logmel, mask)
    if self.training and (self.augment[0] or self.augment[2]):
      x = spec_augment(x, mask, *self.augment)
    x = x[:, None]
    for block in self.blocks:
      x, mask = block(x, mask)
    b, c, t, m = x.shape
    x = self.frame_proj(x.permute(0, 2, 3, 1).reshape(b, t, m * c))
    x = F.dropout(x, self.dropout_rate, self.training)
    packed = trnn.pack_padded_sequence(x, mask.sum(dim=1).cpu(), batch_first=True,
                                       enforce_sorted=False)
    x, _ = trnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=t)
    embedding = torch.relu(self.embedding(self.attention(x, mask)))
    logits = self.head(F.dropout(embedding, self.dropout_rate, self.training))
    return {"logits": logits, "embedding": embedding, "aligned": self.align(embedding)}


def batch_norm(channels: int) -> tnn.BatchNorm2d:
  """Keras's BatchNorm settings (`kd_mh.models.teacher.batch_norm`)."""
  return tnn.BatchNorm2d(channels, eps=teacher_lib.BN_EPSILON, momentum=1 - teacher_lib.BN_MOMENTUM)


class SeparableConv(tnn.Module):
  def __init__(self, in_channels: int, features: int):
    super().__init__()
    self.depthwise = tnn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels,
                                bias=False)
    self.pointwise = tnn.Conv2d(in_channels, features, 1, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.pointwise(self.depthwise(x))


class ResidualBlock(tnn.Module):
  def __init__(self, in_channels: int, features: int):
    super().__init__()
    self.shortcut_conv = tnn.Conv2d(in_channels, features, 1, stride=2, bias=False)
    self.shortcut_bn = batch_norm(features)
    self.sepconv1 = SeparableConv(in_channels, features)
    self.bn1 = batch_norm(features)
    self.sepconv2 = SeparableConv(features, features)
    self.bn2 = batch_norm(features)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    # A 1x1 stride-2 SAME conv needs no padding at any input size.
    shortcut = self.shortcut_bn(self.shortcut_conv(x))
    y = torch.relu(self.bn1(self.sepconv1(x)))
    y = self.bn2(self.sepconv2(y))
    return same_max_pool(y, 3, 2) + shortcut


class MiniXception(tnn.Module):
  def __init__(self, model: teacher_lib.MiniXception):
    super().__init__()
    stem = model.stem_features
    self.stem_conv1 = tnn.Conv2d(1, stem, 3, bias=False)
    self.stem_bn1 = batch_norm(stem)
    self.stem_conv2 = tnn.Conv2d(stem, stem, 3, bias=False)
    self.stem_bn2 = batch_norm(stem)
    channels, blocks = stem, {}
    for i, features in enumerate(model.block_features, start=1):
      blocks[f"block{i}"] = ResidualBlock(channels, features)
      channels = features
    self.blocks = tnn.ModuleDict(blocks)
    self.head_conv = tnn.Conv2d(channels, model.num_classes, 3, padding=1)

  def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """images [N, 1, 64, 64] of 0..255 pixels."""
    # Standard NCHW strides: a permuted one-channel input also passes as channels_last, and
    # PyTorch's CPU conv backward of the 1x1 stride-2 shortcut crashes in that layout.
    x = images.to(torch.float32, memory_format=torch.contiguous_format)
    x = (x / 255.0 - 0.5) * 2.0
    x = torch.relu(self.stem_bn1(self.stem_conv1(x)))
    x = torch.relu(self.stem_bn2(self.stem_conv2(x)))
    for block in self.blocks.values():
      x = block(x)
    return {"logits": self.head_conv(x).mean(dim=(2, 3)), "embedding": x.mean(dim=(2, 3))}


class Teacher(tnn.Module):
  """`kd_mh.models.teacher.Teacher` with mean pooling and frozen BatchNorm statistics (keep it in
  eval mode: it has no dropout, so eval mode is exactly `freeze_bn`)."""

  def __init__(self, model: teacher_lib.Teacher):
    super().__init__()
    if model.pooling != "mean" or not model.freeze_bn:
      raise ValueError("the PyTorch port covers the mean-pooled teacher with frozen BatchNorm")
    self.backbone = MiniXception(teacher_lib.MiniXception(num_classes=model.num_classes))

  def forward(self, faces: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """faces [B, T, 64, 64, 1] uint8, mask [B, T]."""
    b, t = faces.shape[:2]
    out = self.backbone(faces.reshape((b * t,) + faces.shape[2:]).permute(0, 3, 1, 2))
    w = mask.to(torch.float32)[..., None]
    count = torch.clamp(w.sum(dim=1), min=1)
    return {k: (torch.where(w > 0, v.reshape(b, t, -1), 0.0)).sum(dim=1) / count
            for k, v in out.items()}


def flax_to_torch(flat: Mapping[str, np.ndarray], module: tnn.Module) -> None:
  """Loads flattened Flax variables ("params/a/b/kernel", "batch_stats/.../mean") into `module`.

  Every Flax variable must land on a tensor of the port and every tensor of the port (BatchNorm's
  step counters aside) must get one, with the same shape.
  """
  target = module.state_dict()
  loaded: dict[str, torch.Tensor] = {}
  gru: dict[tuple[str, str], dict[str, np.ndarray]] = {}
  for path, value in flat.items():
    collection, *parts = path.split("/")
    if len(parts) >= 2 and parts[-2] in ("ir", "iz", "in", "hr", "hz", "hn"):
      layer, direction = parts[-3].removeprefix("rnn").split("_")
      gru.setdefault((layer, direction), {})[f"{parts[-2]}/{parts[-1]}"] = value
      continue
    name = ".".join(parts[:-1])
    if name.startswith("backbone.block"):
      name = "backbone.blocks." + name.removeprefix("backbone.")
    elif name.startswith("block"):
      name = "blocks." + str(int(name[len("block"):name.index(".")]) - 1) + name[name.index("."):]
    leaf = parts[-1]
    if collection == "batch_stats":
      loaded[f"{name}.running_{leaf}"] = torch.from_numpy(value.copy())
    elif leaf == "kernel":
      array = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      loaded[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(array))
    elif leaf == "scale":
      loaded[f"{name}.weight"] = torch.from_numpy(value.copy())
    else:
      loaded[f"{name}.{leaf}"] = torch.from_numpy(value.copy())
  for (layer, direction), cell in gru.items():
    suffix = f"l{int(layer) - 1}" + ("_reverse" if direction == "backward" else "")
    stack = lambda names: np.concatenate([cell[n] for n in names], axis=-1)
    hidden = cell["hn/bias"].shape[0]
    loaded[f"rnn.weight_ih_{suffix}"] = torch.from_numpy(
        np.ascontiguousarray(stack(["ir/kernel", "iz/kernel", "in/kernel"]).T))
    loaded[f"rnn.weight_hh_{suffix}"] = torch.from_numpy(
        np.ascontiguousarray(stack(["hr/kernel", "hz/kernel", "hn/kernel"]).T))
    loaded[f"rnn.bias_ih_{suffix}"] = torch.from_numpy(stack(["ir/bias", "iz/bias", "in/bias"]))
    # Flax's reset and update gates have one bias each, on the input side.
    loaded[f"rnn.bias_hh_{suffix}"] = torch.from_numpy(
        np.concatenate([np.zeros(2 * hidden, np.float32), cell["hn/bias"]]))
  wanted = {k for k in target if not k.endswith("num_batches_tracked")}
  if set(loaded) != wanted:
    raise ValueError(f"Flax -> PyTorch: missing {sorted(wanted - set(loaded))}, unexpected "
                     f"{sorted(set(loaded) - wanted)}")
  wrong = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in loaded.items()
           if v.shape != target[k].shape]
  if wrong:
    raise ValueError(f"Flax -> PyTorch: wrong shapes {wrong}")
  module.load_state_dict({**target, **loaded})


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
  """`kd_mh.losses.cross_entropy`: mean over valid, labelled examples (0 if none)."""
  weights = (valid & (labels >= 0)).to(logits.dtype)
  nll = F.cross_entropy(logits, labels.clamp(0, logits.shape[-1] - 1), reduction="none")
  return (nll * weights).sum() / torch.clamp(weights.sum(), min=1e-12)


def kd_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
            labels: torch.Tensor, valid: torch.Tensor, teacher_valid: torch.Tensor,
            loss_config) -> torch.Tensor:
  """`kd_mh.losses.total_loss` with cosine alignment."""
  if loss_config.alignment != "cosine":
    raise ValueError("the PyTorch port covers cosine alignment")
  temperature = loss_config.temperature
  w = (valid & teacher_valid).to(torch.float32)
  denominator = torch.clamp(w.sum(), min=1e-12)
  log_p_t = F.log_softmax(teacher["logits"] / temperature, dim=-1)
  log_p_s = F.log_softmax(student["logits"] / temperature, dim=-1)
  kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
  kd = temperature ** 2 * (kl * w).sum() / denominator
  cos = F.cosine_similarity(student["aligned"], teacher["embedding"], dim=-1, eps=1e-8)
  align = ((1 - cos) * w).sum() / denominator
  ce = cross_entropy(student["logits"], labels, valid)
  return (loss_config.kd_weight * kd + loss_config.align_weight * align
          + loss_config.ce_weight * ce)


def adamw(model: tnn.Module, optimizer_config) -> torch.optim.AdamW:
  """AdamW as `kd_mh.train.OptimizerSpec.make` (weight decay on matrices and kernels only)."""
  params = [p for p in model.parameters() if p.requires_grad]
  o = optimizer_config
  return torch.optim.AdamW(
      [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
       {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
      lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)


def torch_batch(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
  return {k: torch.from_numpy(v).long() if v.dtype == np.int32 else torch.from_numpy(v)
          for k, v in batch.items()}


def torch_models(reference: Mapping[str, np.ndarray], shapes: Shapes,
                 seed: int) -> tuple[Student, Teacher, float, float]:
  """(student, teacher) ports with the JAX weights, and their largest |logit| differences from
  JAX on the first batch."""
  teacher = Teacher(teacher_module())
  flax_to_torch(_sub(reference, "teacher/"), teacher)
  spec = train.step_spec(load_config("student"), teacher_module())
  if spec.class_map is not None:
    raise ValueError("the PyTorch port covers students of the seven FER2013 classes")
  student = Student(spec.model, shapes.n_mels)
  flax_to_torch(_sub(reference, "student/"), student)
  batch = torch_batch(make_batch(0, shapes, seed))
  student.eval()
  teacher.eval()
  with torch.no_grad():
    student_diff = np.max(np.abs(student(batch["logmel"], batch["logmel_mask"])["logits"].numpy()
                                 - reference["student_logits"]))
    teacher_diff = np.max(np.abs(teacher(batch["faces"], batch["face_mask"])["logits"].numpy()
                                 - reference["teacher_logits"]))
  return student, teacher, float(student_diff), float(teacher_diff)


def torch_step(mode: str, student: Student, teacher: Teacher, compiled: bool):
  """A train step function of (batch) for `mode`, on copies of the given models."""
  config = load_config(mode)
  student, teacher = copy.deepcopy(student), copy.deepcopy(teacher)
  teacher.eval()  # frozen statistics (and frozen weights when distilling)
  student.train()
  trained = teacher if mode == "teacher" else student
  optimizer = adamw(trained, config.optimizer)
  if mode == "student":
    teacher.requires_grad_(False)
  run_student, run_teacher = student, teacher
  if compiled:
    run_student, run_teacher = torch.compile(student), torch.compile(teacher)
  clip = config.optimizer.grad_clip_norm

  def step(batch: Mapping[str, torch.Tensor]) -> float:
    valid_face = batch["example_mask"] & batch["face_mask"].any(dim=1)
    valid_voice = batch["example_mask"] & batch["logmel_mask"].any(dim=1)
    if mode == "teacher":
      out = run_teacher(batch["faces"], batch["face_mask"])
      loss = cross_entropy(out["logits"], batch["label"], valid_face)
    else:
      out = run_student(batch["logmel"], batch["logmel_mask"])
      if mode == "student":
        with torch.no_grad():
          teacher_out = run_teacher(batch["faces"], batch["face_mask"])
        loss = kd_loss(out, teacher_out, batch["label"], valid_voice,
                       batch["face_mask"].any(dim=1), config.loss)
      else:
        loss = cross_entropy(out["logits"], batch["label"], valid_voice)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    tnn.utils.clip_grad_norm_(trained.parameters(), clip)
    optimizer.step()
    return loss.item()

  return step


def torch_train(shapes: Shapes, seed: int, exchange: pathlib.Path, threads: int,
                compile_too: bool) -> dict[str, Any]:
  torch.set_num_threads(threads)
  with np.load(exchange / REFERENCE_FILE, allow_pickle=False) as f:
    reference = dict(f)
  student, teacher, student_diff, teacher_diff = torch_models(reference, shapes, seed)
  batches = [torch_batch(make_batch(i, shapes, seed)) for i in range(shapes.warmup + shapes.steps)]
  results: dict[str, Any] = {"port_check": {"student_max_abs_logit_diff": student_diff,
                                            "teacher_max_abs_logit_diff": teacher_diff}}
  a = torch.ones(MATMUL_SIZE, MATMUL_SIZE)
  results["matmul_gflop_s"] = matmul_gflop_s(lambda: a @ a, MATMUL_SIZE)
  for compiled in (False, True) if compile_too else (False,):
    if compiled:
      # PyTorch's CPU conv library crashes in the backward of a 1x1 stride-2 conv in the
      # channels_last layout that the compiler would pick for the teacher.
      torch._inductor.config.layout_optimization = False  # pylint: disable=protected-access
    for mode in MODES:
      label = f"{mode}/{'compile' if compiled else 'eager'}"
      try:
        step = torch_step(mode, student, teacher, compiled)
        losses = []
        median_s, times = median_times(lambda i: losses.append(step(batches[i])), shapes.warmup,
                                       shapes.steps)
      except Exception as e:  # pylint: disable=broad-except
        results[label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        continue
      results[label] = {"step_s": median_s, "examples_per_s": shapes.batch_size / median_s,
                        "first_step_s": times[0], "times_s": times, "last_loss": losses[-1]}
  return results


def torch_infer(shapes: Shapes, seed: int, exchange: pathlib.Path,
                compile_too: bool) -> dict[str, Any]:
  torch.set_num_threads(1)
  with np.load(exchange / REFERENCE_FILE, allow_pickle=False) as f:
    student = torch_models(dict(f), shapes, seed)[0]
  student.eval()
  results = {}
  for compiled in (False, True) if compile_too else (False,):
    forward = torch.compile(student) if compiled else student
    for n in sorted({shapes.batch_size, 1}):
      logmel, mask = map(torch.from_numpy, inference_batch(n, shapes, seed))
      with torch.inference_mode():
        median_s, _ = median_times(lambda i: forward(logmel, mask), 1, shapes.infer_steps)
      results[f"{'compile' if compiled else 'eager'}/batch{n}"] = {
          "call_s": median_s, "rtf": median_s / (n * shapes.logmel_frames * HOP_S)}
  return results


# ---------------------------------------------------------------------------------------------
# The parent: children, table.


def run_child(worker: str, exchange: pathlib.Path, cores: Sequence[int], variant: str = "default",
              one_thread_xla: bool = False) -> dict[str, Any]:
  """Runs this script as `--worker` pinned to `cores`; returns the JSON it leaves in `exchange`."""
  env = dict(os.environ)
  xla_flags = [env.get("XLA_FLAGS", ""), XLA_VARIANTS[variant]]
  if one_thread_xla:
    xla_flags.append("--xla_cpu_multi_thread_eigen=false")
  env["XLA_FLAGS"] = " ".join(f for f in xla_flags if f)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  argv = [sys.executable, __file__, f"--worker={worker}", f"--variant={variant}",
          f"--exchange={exchange}", f"--quick={_QUICK.value}"]
  argv += [f"--{flag.name}={flag.value}" for flag in _PASSED_FLAGS]
  out = exchange / f"{worker}_{variant}.json"
  print(f"[{time.strftime('%H:%M:%S')}] {worker} ({variant}) on cores {list(cores)} ...",
        flush=True)
  start = time.perf_counter()
  subprocess.run(argv, env=env, check=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
  print(f"[{time.strftime('%H:%M:%S')}]   done in {time.perf_counter() - start:.0f} s", flush=True)
  return json.loads(out.read_text())


def child_main(shapes: Shapes) -> None:
  exchange = pathlib.Path(_EXCHANGE.value)
  worker, variant = _WORKER.value, _VARIANT.value
  if worker == "jax_train":
    result = jax_train(shapes, _SEED.value, exchange, variant)
  elif worker == "jax_infer":
    result = jax_infer(shapes, _SEED.value)
  elif worker == "torch_train":
    result = torch_train(shapes, _SEED.value, exchange, _THREADS.value, _TORCH_COMPILE.value)
  else:
    result = torch_infer(shapes, _SEED.value, exchange, _TORCH_COMPILE.value)
  (exchange / f"{worker}_{variant}.json").write_text(json.dumps(result))


def _ratio(a: float, b: float | None) -> float:
  return a / b if b else math.nan


def _met(ok: bool) -> str:
  return "yes" if ok else "NO"


def _fmt(value: float | None, spec: str = ".1f") -> str:
  return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
      else format(value, spec)


def report(results: Mapping[str, Any], shapes: Shapes, threads: int) -> dict[str, Any]:
  """Prints the tables; returns the summary (ratios, goals) that goes into the JSON line."""
  jax_runs = {v: results[f"jax_train/{v}"] for v in XLA_VARIANTS}
  torch_run = results["torch_train"]
  eps = lambda run, key: (run.get(key) or {}).get("examples_per_s")
  summary: dict[str, Any] = {}
  print(f"\nTrain step, examples/s (median of {shapes.steps} steps after {shapes.warmup}; "
        f"batch {shapes.batch_size}; {threads} threads; log-mel [{shapes.logmel_frames}, "
        f"{shapes.n_mels}], faces [{shapes.face_frames}, 64, 64, 1])")
  header = (f"{'model':<27}{'JAX':>8}{'JAX':>9}{'torch':>8}{'torch':>9}{'JAX/torch':>11}"
            f"{'JAX/torch':>11}{'goal':>7}{'met':>5}  better XLA flags")
  print(header)
  print(f"{'':<27}{'default':>8}{'ynn-off':>9}{'eager':>8}{'compile':>9}{'eager':>11}"
        f"{'best':>11}")
  for mode in MODES:
    jax_eps = {v: jax_runs[v][mode]["examples_per_s"] for v in XLA_VARIANTS}
    best_variant = max(jax_eps, key=jax_eps.get)
    eager, compiled = eps(torch_run, f"{mode}/eager"), eps(torch_run, f"{mode}/compile")
    torch_best = max((x for x in (eager, compiled) if x is not None), default=None)
    vs_eager, vs_best = (_ratio(jax_eps[best_variant], eager),
                         _ratio(jax_eps[best_variant], torch_best))
    gain = jax_eps["ynn_off"] / jax_eps["default"]
    summary[mode] = {"jax_examples_per_s": jax_eps, "torch_eager_examples_per_s": eager,
                     "torch_compile_examples_per_s": compiled, "jax_over_torch_eager": vs_eager,
                     "jax_over_torch_best": vs_best, "better_xla_flags": best_variant,
                     "ynn_off_over_default": gain, "meets_goal": vs_best >= GOAL_SPEEDUP}
    print(f"{ROW_NAMES[mode]:<27}{jax_eps['default']:>8.1f}{jax_eps['ynn_off']:>9.1f}"
          f"{_fmt(eager):>8}{_fmt(compiled):>9}{vs_eager:>10.2f}x{vs_best:>10.2f}x"
          f"{'>=' + str(GOAL_SPEEDUP):>7}{_met(vs_best >= GOAL_SPEEDUP):>5}  {best_variant} "
          f"({gain:.2f}x ynn-off/default)")
  errors = {k: v["error"] for k, v in torch_run.items() if isinstance(v, dict) and "error" in v}
  for label, error in errors.items():
    print(f"  torch {label} failed: {error}")
  timed = {f"JAX {v} {mode}": jax_runs[v][mode]["times_s"] for v in XLA_VARIANTS for mode in MODES}
  timed.update({f"torch {k}": v["times_s"] for k, v in torch_run.items()
                if isinstance(v, dict) and "times_s" in v})
  noisy = {k: max(t[shapes.warmup:]) / min(t[shapes.warmup:]) for k, t in timed.items()}
  noisy = {k: spread for k, spread in noisy.items() if spread > NOISY_SPREAD}
  summary["noisy_rows"] = noisy
  if noisy:
    print("  uneven step times (slowest / fastest timed step; other processes competing for the "
          "cores?): " + ", ".join(f"{k} {spread:.1f}x" for k, spread in noisy.items()))

  report_arithmetic(jax_runs, torch_run, summary, shapes.batch_size)

  print(f"\nJAX jit compile of the train step, s (lower + compile; goal <= {GOAL_COMPILE_S:.0f}, "
        "met by both flag settings)"
        "  |  torch.compile first step, s")
  print(f"{'model':<27}{'default':>8}{'ynn-off':>9}{'goal':>7}{'met':>5}{'torch':>9}")
  for mode in MODES:
    compile_s = {v: jax_runs[v][mode]["compile_s"] for v in XLA_VARIANTS}
    first = (torch_run.get(f"{mode}/compile") or {}).get("first_step_s")
    summary[mode]["jax_compile_s"] = compile_s
    summary[mode]["compile_meets_goal"] = max(compile_s.values()) <= GOAL_COMPILE_S
    summary[mode]["torch_compile_first_step_s"] = first
    print(f"{ROW_NAMES[mode]:<27}{compile_s['default']:>8.1f}{compile_s['ynn_off']:>9.1f}"
          f"{'<=' + str(int(GOAL_COMPILE_S)):>7}"
          f"{_met(summary[mode]['compile_meets_goal']):>5}{_fmt(first):>9}")

  print(f"\nStudent inference on one core, real-time factor (s of compute per s of audio; "
        f"{shapes.logmel_frames * HOP_S:g} s utterances; goal <= {GOAL_RTF})")
  columns = [("JAX default", results["jax_infer/default"], ""),
             ("JAX ynn-off", results["jax_infer/ynn_off"], ""),
             ("torch eager", results["torch_infer"], "eager/"),
             ("torch compile", results["torch_infer"], "compile/")]
  print(f"{'utterances per call':<27}" + "".join(f"{name:>15}" for name, _, _ in columns)
        + f"{'JAX/torch':>11}{'met':>5}")
  summary["inference_rtf"] = {}
  for n in sorted({shapes.batch_size, 1}, reverse=True):
    rtf = {name: (run.get(f"{prefix}batch{n}") or {}).get("rtf") for name, run, prefix in columns}
    jax_best = min(rtf["JAX default"], rtf["JAX ynn-off"])
    torch_best = min(x for x in (rtf["torch eager"], rtf["torch compile"]) if x is not None)
    summary["inference_rtf"][f"batch{n}"] = {**rtf, "meets_goal": jax_best <= GOAL_RTF,
                                             "torch_best_over_jax_best": torch_best / jax_best}
    print(f"{n:<27}" + "".join(f"{_fmt(rtf[name], '.5f'):>15}" for name, _, _ in columns)
          + f"{torch_best / jax_best:>10.2f}x{_met(jax_best <= GOAL_RTF):>5}")
  print("  (JAX/torch: how many times faster the better JAX setting runs than the better "
        "PyTorch; met: the better JAX setting meets the goal)")

  check = torch_run["port_check"]
  print(f"\nPort check, first batch, max |logit(JAX) - logit(PyTorch)|: student "
        f"{check['student_max_abs_logit_diff']:.2e}, "
        f"teacher {check['teacher_max_abs_logit_diff']:.2e}")
  summary["port_check"] = check
  return summary


def report_arithmetic(jax_runs: Mapping[str, Any], torch_run: Mapping[str, Any],
                      summary: dict[str, Any], batch_size: int) -> None:
  """Prints how fast each step does its arithmetic, against this CPU's dense matmul rate.

  Both frameworks run the same architectures, so XLA's count of a step's floating-point
  operations is the work of either; work / step time is the rate each achieved. When PyTorch's
  rate times the speed-up goal exceeds what a dense matmul reaches on these cores, the goal is
  beyond the machine for that step, whatever the framework does.
  """
  matmul = {"JAX": max(run["matmul_gflop_s"] for run in jax_runs.values()),
            "torch": torch_run.get("matmul_gflop_s")}
  summary["matmul_gflop_s"] = matmul
  print(f"\nArithmetic rate, GFLOP/s (work per step from XLA's cost analysis; dense "
        f"{MATMUL_SIZE}x{MATMUL_SIZE} float32 matmul on the same cores: JAX "
        f"{matmul['JAX']:.0f}, torch {_fmt(matmul['torch'], '.0f')})")
  print(f"{'model':<27}{'GFLOP':>8}{'JAX':>8}{'torch':>8}{'needed':>9}{'needed/':>10}")
  print(f"{'':<27}{'/step':>8}{'best':>8}{'best':>8}{'for goal':>9}{'matmul':>10}")
  for mode in MODES:
    row = summary[mode]
    gflop = jax_runs["ynn_off"][mode]["gflop_per_step"]
    jax_best = max(row["jax_examples_per_s"].values())
    torch_best = max((x for x in (row["torch_eager_examples_per_s"],
                                  row["torch_compile_examples_per_s"]) if x is not None),
                     default=math.nan)
    rate = lambda examples_per_s: gflop * examples_per_s / batch_size  # GFLOP/s
    needed = GOAL_SPEEDUP * rate(torch_best)
    row["arithmetic"] = {"gflop_per_step": gflop, "jax_gflop_s": rate(jax_best),
                         "torch_gflop_s": rate(torch_best), "needed_gflop_s": needed,
                         "needed_over_jax_matmul": needed / matmul["JAX"]}
    print(f"{ROW_NAMES[mode]:<27}{gflop:>8.1f}{rate(jax_best):>8.0f}{rate(torch_best):>8.0f}"
          f"{needed:>9.0f}{needed / matmul['JAX']:>9.2f}x")
  print("  (needed for goal: the JAX rate that would be 1.5x the better PyTorch; needed/matmul "
        "above 1: faster than JAX multiplies dense matrices here)")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  shapes = shapes_from_flags()
  if _WORKER.value:
    child_main(shapes)
    return
  available = sorted(os.sched_getaffinity(0))
  threads = _THREADS.value
  if not 1 <= threads <= len(available):
    raise app.UsageError(f"--threads={threads}: this process may use {len(available)} cores")
  cores, one_core = available[:threads], available[:1]
  start = time.perf_counter()
  results: dict[str, Any] = {}
  with tempfile.TemporaryDirectory(prefix="kd_mh_train_speed_") as tmp:
    exchange = pathlib.Path(tmp)
    for variant in XLA_VARIANTS:  # "default" first: it writes the reference weights
      results[f"jax_train/{variant}"] = run_child("jax_train", exchange, cores, variant,
                                                  one_thread_xla=threads == 1)
    results["torch_train"] = run_child("torch_train", exchange, cores)
    for variant in XLA_VARIANTS:
      results[f"jax_infer/{variant}"] = run_child("jax_infer", exchange, one_core, variant,
                                                  one_thread_xla=True)
    results["torch_infer"] = run_child("torch_infer", exchange, one_core)
  summary = report(results, shapes, threads)
  elapsed = time.perf_counter() - start
  print(f"\ntotal {elapsed:.0f} s; JAX {jax.__version__}, PyTorch {torch.__version__}")
  print(json.dumps({"shapes": dataclasses.asdict(shapes), "threads": threads,
                    "summary": summary, "raw": results, "total_s": elapsed}))


if __name__ == "__main__":
  app.run(main)
