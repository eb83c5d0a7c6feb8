"""Masked pooling over time: [B, T, ...] with a validity mask [B, T] -> [B, ...].

Shapes are static under jit, so clips are padded to a fixed T and the mask marks the real steps.
Padded steps never reach the result, whatever they hold (NaN included), and a clip with no valid
step pools to zeros (finite), which callers mask out of their losses.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _expand(mask: jax.Array, x: jax.Array) -> jax.Array:
  """The [B, T] mask as a bool array broadcastable to `x` [B, T, ...]."""
  mask = jnp.asarray(mask, bool)
  return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over axis 1 of the valid steps of `x` [B, T, ...]; zeros where none is valid."""
  m = _expand(mask, x)
  total = jnp.sum(jnp.where(m, x, 0), axis=1)
  count = jnp.sum(m, axis=1, dtype=x.dtype)
  return total / jnp.maximum(count, 1)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Max over axis 1 of the valid steps of `x` [B, T, ...]; zeros where none is valid."""
  m = _expand(mask, x)
  # The dtype's lowest finite value rather than -inf keeps gradients and outputs finite.
  peak = jnp.max(jnp.where(m, x, jnp.finfo(x.dtype).min), axis=1)
  return jnp.where(jnp.any(m, axis=1), peak, 0)


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax over axis 1 of `scores` [B, T] restricted to the valid steps; all zeros if none."""
  mask = jnp.asarray(mask, bool)
  scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
  scores = scores - jax.lax.stop_gradient(jnp.max(scores, axis=1, keepdims=True))
  weights = jnp.where(mask, jnp.exp(scores), 0)
  return weights / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True),
                               jnp.finfo(scores.dtype).tiny)


def weighted_sum(x: jax.Array, weights: jax.Array) -> jax.Array:
  """Sum over axis 1 of `x` [B, T, ...] weighted by `weights` [B, T] (zero-weight steps ignored)."""
  x = jnp.where(_expand(weights > 0, x), x, 0)
  return jnp.einsum("bt,bt...->b...", weights.astype(x.dtype), x)


class AttentionPool(nn.Module):
  """Attention-weighted mean over the valid steps: score_t = w . tanh(W x_t + b).

  The score layer starts at zero, so a fresh pool is exactly the masked mean: swapping it in
  for mean pooling does not move a pretrained model's outputs before training.

  Attributes:
    hidden: width of the tanh layer.
  """
  hidden: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pools `x` [B, T, D]; returns (pooled [B, D], weights [B, T], 1 in sum over valid steps)."""
    h = nn.tanh(nn.Dense(self.hidden, name="hidden")(x))
    # No bias: the softmax ignores a shift of every score, so a bias would only collect
    # rounding noise (and make the parameters depend on how a sum is split across devices).
    scores = nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros, name="score")(h)
    weights = masked_softmax(scores[..., 0], mask)
    return weighted_sum(x, weights), weights
