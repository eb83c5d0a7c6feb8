"""The speech student: a CRNN from an utterance's log-mel [B, F, M] to emotion logits.

  log-mel [B, F, M] (natural log, 10 ms hop) + mask [B, F]
    -> per-utterance normalisation over the valid frames (`normalize_logmel`)
    -> conv blocks over (time, mel): 2 x [3x3 conv -> GroupNorm -> ReLU] -> max pool
       (time and mel downsampled; the frame mask follows the time pooling)
    -> flatten mel x channels -> dense (rnn_hidden) -> dropout
    -> bidirectional GRU (or LSTM), lengths from the mask
    -> masked attention pooling over time (`kd_mh.models.pooling.AttentionPool`)
    -> dense + ReLU = embedding [B, D]
    -> dropout -> logits [B, num_classes]; and aligned [B, teacher_dim], the embedding
       projected into the teacher's embedding space for the alignment loss

Normalisation is GroupNorm with statistics over each example's valid frames only: nothing depends
on the other examples of a batch (so tiny batches, and 1 vs 8 devices, give the same numbers) or
on how much padding follows a clip. Padded frames are zeroed before every convolution, so a clip
padded to any length gives the same outputs as the clip alone. Masks are prefixes (valid frames
first, padding after), as the input pipeline pads at the end; the recurrent layers rely on it.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_mh.emotions import NUM_CLASSES
from kd_mh.models import pooling

RNN_CELLS = ("gru", "lstm")


def normalize_logmel(logmel: jax.Array, mask: jax.Array, per_bin: bool = False,
                     eps: float = 1e-5) -> jax.Array:
  """Standardises each utterance over its valid frames; padded frames become 0.

  Args:
    logmel: [B, F, M] log-mel energies.
    mask: [B, F] valid frames.
    per_bin: one mean/variance per mel bin (cepstral-style; also removes the channel's spectral
      colouring and the utterance's average spectral tilt) instead of one over all bins (removes
      only the recording gain and dynamic range, keeps the spectral shape).
    eps: variance floor, so a constant or empty utterance stays finite.

  Returns:
    float32 [B, F, M].
  """
  x = jnp.asarray(logmel, jnp.float32)
  m = jnp.asarray(mask, bool)[:, :, None]
  axes = (1,) if per_bin else (1, 2)
  count = jnp.maximum(jnp.sum(m, axis=axes, keepdims=True) * (1 if per_bin else x.shape[2]), 1)
  mean = jnp.sum(jnp.where(m, x, 0.0), axis=axes, keepdims=True) / count
  var = jnp.sum(jnp.where(m, jnp.square(x - mean), 0.0), axis=axes, keepdims=True) / count
  return jnp.where(m, (x - mean) * jax.lax.rsqrt(var + eps), 0.0)


def spec_augment(rng: jax.Array, x: jax.Array, mask: jax.Array, time_masks: int,
                 time_width: int, mel_masks: int, mel_width: int) -> jax.Array:
  """SpecAugment masking (Park et al., 2019) of normalised log-mel [B, F, M]: zeroes, per example,
  `time_masks` bands of 0..time_width frames and `mel_masks` bands of 0..mel_width bins.

  Zero is each utterance's mean after `normalize_logmel`, so a masked band carries no level
  information. Time bands start inside the valid frames of each example.
  """
  b, f, m = x.shape
  keep = jnp.ones((b, f, m), bool)
  lengths = jnp.maximum(jnp.sum(mask, axis=1), 1)
  for axis, count, width, size in ((1, time_masks, time_width, f), (2, mel_masks, mel_width, m)):
    for _ in range(count):
      rng, width_rng, start_rng = jax.random.split(rng, 3)
      w = jax.random.randint(width_rng, (b,), 0, width + 1)
      extent = lengths if axis == 1 else jnp.full((b,), m)
      start = (jax.random.uniform(start_rng, (b,)) * jnp.maximum(extent - w, 1)).astype(jnp.int32)
      pos = jnp.arange(size)[None, :]
      band = (pos >= start[:, None]) & (pos < (start + w)[:, None])  # [B, size]
      keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
  return jnp.where(keep, x, 0.0)


def _interpolate(x: jax.Array, positions: jax.Array, axis: int) -> jax.Array:
  """x [B, F, M] read at fractional `positions` along axis 1 ([B, F]) or 2 ([B, M]), linearly."""
  size = x.shape[axis]
  positions = jnp.clip(positions, 0, size - 1)
  low = jnp.floor(positions).astype(jnp.int32)
  high = jnp.minimum(low + 1, size - 1)
  weight = positions - low
  expand = (lambda v: v[:, :, None]) if axis == 1 else (lambda v: v[:, None, :])
  take = lambda idx: jnp.take_along_axis(x, jnp.broadcast_to(expand(idx), x.shape), axis=axis)
  return take(low) * (1 - expand(weight)) + take(high) * expand(weight)


def warp_mel(rng: jax.Array, x: jax.Array, max_warp: float) -> jax.Array:
  """Rescales the mel axis of [B, F, M] by a factor drawn per example from 1 +- max_warp.

  Output bin m reads input bin m * factor (linear interpolation; past the top bin, the top bin),
  moving the spectrum's formants and harmonics up or down together: a cheap stand-in for other
  speakers' vocal tracts and registers (vocal tract length perturbation, Jaitly & Hinton 2013).
  """
  b, _, m = x.shape
  factor = 1 + jax.random.uniform(rng, (b,), minval=-max_warp, maxval=max_warp)
  return _interpolate(x, jnp.arange(m)[None, :] * factor[:, None], axis=2)


def stretch_time(rng: jax.Array, x: jax.Array, mask: jax.Array,
                 max_stretch: float) -> tuple[jax.Array, jax.Array]:
  """Plays [B, F, M] with prefix mask [B, F] faster or slower by a rate drawn per example from
  1 +- max_stretch (linear interpolation between frames); returns the frames and their new mask.

  Output frame t reads input frame t * rate, so a rate above 1 shortens the utterance (padding
  follows) and one below 1 lengthens it, cut at F frames.
  """
  b, f, _ = x.shape
  rate = 1 + jax.random.uniform(rng, (b,), minval=-max_stretch, maxval=max_stretch)
  positions = jnp.arange(f)[None, :] * rate[:, None]
  new_mask = positions <= (jnp.sum(mask, axis=1, keepdims=True) - 1)
  return jnp.where(new_mask[:, :, None], _interpolate(x, positions, axis=1), 0.0), new_mask


def block_max_pool(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """Max over non-overlapping (time, mel) windows of [B, T, M, C] (window = stride).

  A partial last window is padded at the end with the dtype's lowest value, so it covers the same
  frames as `downsample_mask` (for windows of 2 this is `nn.max_pool`'s SAME padding). The
  gradient of a reshape and a max runs far faster on CPU than XLA's select-and-scatter, the
  gradient of `nn.max_pool`; where the max is tied it is shared among the tied inputs.
  """
  b, t, m, c = x.shape
  wt, wm = window
  x = jnp.pad(x, ((0, 0), (0, -t % wt), (0, -m % wm), (0, 0)),
              constant_values=jnp.finfo(x.dtype).min)
  return x.reshape(b, x.shape[1] // wt, wt, x.shape[2] // wm, wm, c).max(axis=(2, 4))


def downsample_mask(mask: jax.Array, factor: int) -> jax.Array:
  """The [B, T] frame mask after pooling time by `factor` (window = stride, SAME padding).

  A pooled step is valid when any frame it covers is: ceil(n / factor) steps for a prefix of n.
  """
  mask = jnp.asarray(mask, bool)
  b, t = mask.shape
  pad = -t % factor
  mask = jnp.pad(mask, ((0, 0), (0, pad)))
  return jnp.any(mask.reshape(b, (t + pad) // factor, factor), axis=2)


class MaskedGroupNorm(nn.Module):
  """`nn.GroupNorm` on [B, T, M, C] with statistics over the frames where `frames` [B, T] is set.

  The same function and parameters ("scale", "bias" [C]) as `nn.GroupNorm(num_groups)` given the
  mask broadcast to x's shape, statistics in float32 by E[x^2] - E[x]^2 as flax computes them.
  The sums over valid frames are contractions with the frame mask, which XLA's CPU backend runs
  faster, forward and backward, than flax's masked means. Returns float32.
  """
  num_groups: int
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array, frames: jax.Array) -> jax.Array:
    b, _, m, c = x.shape
    group_size = c // self.num_groups
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    x = x.astype(jnp.float32)
    weights = frames.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights, axis=1) * (m * group_size), 1)[:, None]
    group_sum = lambda y: jnp.einsum("btmc,bt->bc", y, weights).reshape(
        b, self.num_groups, group_size).sum(axis=2)
    mean = group_sum(x) / count
    var = jnp.maximum(group_sum(jnp.square(x)) / count - jnp.square(mean), 0.0)
    gain = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), group_size, axis=1) * scale
    shift = bias - jnp.repeat(mean, group_size, axis=1) * gain
    return x * gain[:, None, None, :] + shift[:, None, None, :]


class ConvBlock(nn.Module):
  """2 x [3x3 conv -> masked GroupNorm -> ReLU] -> max pool, on [B, T, M, C] with mask [B, T].

  Attributes:
    features: output channels.
    pool: (time, mel) pooling window and stride.
    norm_groups: GroupNorm groups.
    dtype: computation dtype of the convolutions.
  """
  features: int
  pool: tuple[int, int]
  norm_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    frames = mask[:, :, None, None]
    # An example without valid frames normalises over its (zero) padding: finite, not 0/0.
    norm_frames = mask | ~jnp.any(mask, axis=1, keepdims=True)
    for i in (1, 2):
      # Zeroing padding makes it look like the conv's own SAME zero padding of an unpadded clip.
      x = jnp.where(frames, x, 0)
      x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype,
                  name=f"conv{i}")(x)
      x = MaskedGroupNorm(self.norm_groups, name=f"norm{i}")(x, norm_frames)
      x = nn.relu(x).astype(self.dtype)
    # ReLU outputs are >= 0, so zeroed padding never wins a max over a window with a valid frame.
    x = jnp.where(frames, x, 0)
    x = block_max_pool(x, self.pool)
    return x, downsample_mask(mask, self.pool[0])


class Student(nn.Module):
  """Log-mel [B, F, M] with mask [B, F] -> {"logits", "embedding", "aligned"}.

  The default configuration has about 0.4M parameters.

  Attributes:
    num_classes: output classes (7 in FER2013 order; e.g. 8 for RAVDESS's native classes).
    teacher_dim: size of the teacher's embedding, the width of "aligned".
    embed_dim: size of the student's own embedding.
    conv_features: channels of each conv block.
    time_pool: time pooling of each conv block (total downsampling is their product).
    mel_pool: mel pooling of each conv block.
    norm_groups: GroupNorm groups (must divide every entry of conv_features).
    rnn_cell: "gru" or "lstm".
    rnn_hidden: hidden units per direction.
    rnn_layers: stacked bidirectional layers.
    attention_hidden: width of the attention-pooling scorer.
    dropout_rate: dropout before the recurrent layers and before the head.
    norm_per_bin: per-mel-bin utterance normalisation (see `normalize_logmel`).
    mel_warp: in training, rescale each utterance's mel axis by up to +-this (`warp_mel`); 0: off.
    time_stretch: in training, play each utterance up to +-this faster or slower
      (`stretch_time`); 0: off.
    time_masks, time_mask_width, mel_masks, mel_mask_width: SpecAugment bands applied in
      training (`spec_augment`, drawn from the "dropout" rng); 0 masks: none.
    dtype: computation dtype (e.g. jnp.bfloat16 on TPU); parameters and outputs stay float32.
  """
  num_classes: int = NUM_CLASSES
  teacher_dim: int = 128
  embed_dim: int = 128
  conv_features: Sequence[int] = (16, 32, 64)
  time_pool: Sequence[int] = (2, 2, 2)
  mel_pool: Sequence[int] = (2, 2, 2)
  norm_groups: int = 8
  rnn_cell: str = "gru"
  rnn_hidden: int = 128
  rnn_layers: int = 1
  attention_hidden: int = 64
  dropout_rate: float = 0.3
  norm_per_bin: bool = False
  mel_warp: float = 0.0
  time_stretch: float = 0.0
  time_masks: int = 0
  time_mask_width: int = 0
  mel_masks: int = 0
  mel_mask_width: int = 0
  dtype: Any = jnp.float32

  def _check(self) -> None:
    if not len(self.conv_features) == len(self.time_pool) == len(self.mel_pool):
      raise ValueError(f"Student.conv_features, time_pool and mel_pool need one entry per conv "
                       f"block, got {tuple(self.conv_features)}, {tuple(self.time_pool)}, "
                       f"{tuple(self.mel_pool)}")
    bad = [c for c in self.conv_features if c % self.norm_groups]
    if bad:
      raise ValueError(f"Student.norm_groups={self.norm_groups} must divide every "
                       f"conv_features entry, not {bad}")
    if self.rnn_cell not in RNN_CELLS:
      raise ValueError(f"Student.rnn_cell must be one of {RNN_CELLS}, got {self.rnn_cell!r}")

  def _rnn(self, name: str) -> nn.RNN:
    """One direction; the cell is named because it holds the parameters (RNN holds none)."""
    if self.rnn_cell == "gru":
      cell = nn.GRUCell(self.rnn_hidden, dtype=self.dtype, name=name)
    else:
      cell = nn.OptimizedLSTMCell(self.rnn_hidden, dtype=self.dtype, name=name)
    return nn.RNN(cell)

  @nn.compact
  def __call__(self, logmel: jax.Array, mask: jax.Array,
               train: bool = False) -> dict[str, jax.Array]:
    """Classifies utterances.

    Args:
      logmel: [B, F, M] float log-mel energies.
      mask: [B, F] valid frames (a prefix of each row).
      train: apply dropout and SpecAugment (needs a "dropout" rng).

    Returns:
      float32 {"logits": [B, num_classes], "embedding": [B, embed_dim],
      "aligned": [B, teacher_dim]}. Padding never changes an example's outputs; an example
      without valid frames gets finite outputs that callers mask out of their losses.
    """
    self._check()
    mask = jnp.asarray(mask, bool)
    x = normalize_logmel(logmel, mask, per_bin=self.norm_per_bin)
    masking = train and bool(self.time_masks or self.mel_masks)
    # The masks' key is drawn first, so runs without warp or stretch draw what they always did.
    mask_rng = self.make_rng("dropout") if masking else None
    if train and (self.mel_warp or self.time_stretch):
      warp_rng, stretch_rng = jax.random.split(self.make_rng("dropout"))
      if self.mel_warp:
        x = warp_mel(warp_rng, x, self.mel_warp)
      if self.time_stretch:
        x, mask = stretch_time(stretch_rng, x, mask, self.time_stretch)
    if masking:
      x = spec_augment(mask_rng, x, mask, self.time_masks, self.time_mask_width,
                       self.mel_masks, self.mel_mask_width)
    x = x[..., None].astype(self.dtype)
    for i, (features, t_pool, m_pool) in enumerate(
        zip(self.conv_features, self.time_pool, self.mel_pool), start=1):
      x, mask = ConvBlock(features, (t_pool, m_pool), self.norm_groups, self.dtype,
                          name=f"block{i}")(x, mask)
    b, t = x.shape[:2]
    x = nn.Dense(self.rnn_hidden, dtype=self.dtype, name="frame_proj")(x.reshape(b, t, -1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    lengths = jnp.sum(mask, axis=1)
    for i in range(1, self.rnn_layers + 1):
      x = nn.Bidirectional(self._rnn(f"rnn{i}_forward"), self._rnn(f"rnn{i}_backward"))(
          x, seq_lengths=lengths)
    pooled, _ = pooling.AttentionPool(self.attention_hidden, name="attention")(x, mask)
    embedding = nn.relu(nn.Dense(self.embed_dim, dtype=self.dtype, name="embedding")(pooled))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(
        nn.Dropout(self.dropout_rate, deterministic=not train)(embedding))
    aligned = nn.Dense(self.teacher_dim, dtype=self.dtype, name="align")(embedding)
    return {"logits": logits.astype(jnp.float32), "embedding": embedding.astype(jnp.float32),
            "aligned": aligned.astype(jnp.float32)}
