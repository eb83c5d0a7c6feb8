"""Tests of the speech student (kd_mh.models.student): shapes, masking, normalisation, learning."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_mh import losses
from kd_mh.emotions import NUM_CLASSES
from kd_mh.models import student as student_lib
from kd_mh.models.student import Student

M = 16  # mel bins of the tiny test inputs
# A small model with the default architecture's structure (compiles in about a second).
TINY = Student(conv_features=(8, 16), time_pool=(2, 2), mel_pool=(2, 2), norm_groups=4,
               rnn_hidden=16, attention_hidden=8, embed_dim=16, teacher_dim=12)
APPLY = jax.jit(TINY.apply, static_argnames="train")


def _logmel(rng, b, f, m=M):
  # Log-mel-like values: a negative offset, a spectral slope and noise.
  return (-6.0 + np.linspace(2, -2, m) + rng.standard_normal((b, f, m))).astype(np.float32)


def _mask(lengths, f):
  return np.arange(f)[None, :] < np.asarray(lengths)[:, None]


@functools.lru_cache(maxsize=None)
def _tiny_params():
  """Initial parameters plus noise: zero-initialised biases and scorers would hide leaks."""
  params = TINY.init(jax.random.key(0), np.zeros((1, 24, M), np.float32), np.ones((1, 24), bool))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


def _allclose(a, b, atol=1e-5):
  for key in ("logits", "embedding", "aligned"):
    np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=atol, rtol=1e-4,
                               err_msg=key)


def test_default_outputs_and_parameter_count():
  model = Student()
  logmel = jax.ShapeDtypeStruct((2, 300, 64), jnp.float32)
  mask = jax.ShapeDtypeStruct((2, 300), jnp.bool_)
  variables = jax.eval_shape(model.init, jax.random.key(0), logmel, mask)
  assert set(variables) == {"params"}  # no batch statistics: nothing depends on the batch
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables))
  print(f"Student default parameters: {n_params:,}")
  assert n_params <= 1_000_000
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, logmel, mask)
  assert {k: v.shape for k, v in out.items()} == {
      "logits": (2, NUM_CLASSES), "embedding": (2, 128), "aligned": (2, 128)}
  assert all(v.dtype == jnp.float32 for v in out.values())


@pytest.mark.parametrize("kwargs, classes", [(dict(num_classes=8), 8),
                                             (dict(rnn_cell="lstm", rnn_layers=2), NUM_CLASSES)])
def test_variants(kwargs, classes):
  model = TINY.clone(**kwargs)
  logmel = _logmel(np.random.default_rng(1), 2, 20)
  mask = _mask([20, 11], 20)
  variables = model.init(jax.random.key(0), logmel, mask)
  out = model.apply(variables, logmel, mask)
  assert out["logits"].shape == (2, classes) and out["aligned"].shape == (2, 12)
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


@pytest.mark.parametrize("field, kwargs", [
    ("time_pool", dict(time_pool=(2,))),
    ("norm_groups", dict(norm_groups=3)),
    ("rnn_cell", dict(rnn_cell="transformer")),
])
def test_bad_config_names_the_field(field, kwargs):
  with pytest.raises(ValueError, match=field):
    TINY.clone(**kwargs).init(jax.random.key(0), np.zeros((1, 8, M), np.float32),
                              np.ones((1, 8), bool))


# --- pure helpers -------------------------------------------------------------------------------

@pytest.mark.parametrize("per_bin", [False, True])
def test_normalize_logmel_statistics_over_valid_frames(per_bin):
  rng = np.random.default_rng(2)
  x = _logmel(rng, 2, 30)
  x[0, 20:] = 1e6  # padding garbage must not count
  mask = _mask([20, 30], 30)
  y = np.asarray(student_lib.normalize_logmel(x, mask, per_bin=per_bin))
  assert (y[0, 20:] == 0).all()
  for i, n in enumerate([20, 30]):
    valid = y[i, :n]
    axis = 0 if per_bin else None
    np.testing.assert_allclose(valid.mean(axis=axis), 0.0, atol=1e-5)
    np.testing.assert_allclose(valid.var(axis=axis), 1.0, atol=1e-3)
  # Known answer: one bin, frames (1, 3) -> mean 2, variance 1 -> (-1, 1).
  y = student_lib.normalize_logmel(np.array([[[1.0], [3.0], [9.0]]]), [[1, 1, 0]], eps=0.0)
  np.testing.assert_allclose(y[0, :, 0], [-1.0, 1.0, 0.0])


def test_normalize_logmel_empty_and_constant_are_finite():
  y = student_lib.normalize_logmel(np.full((2, 5, 3), 4.0, np.float32), _mask([0, 5], 5))
  np.testing.assert_array_equal(np.asarray(y), 0.0)


def test_downsample_mask_known_answers():
  mask = _mask([5, 4, 0, 1], 7)
  np.testing.assert_array_equal(np.asarray(student_lib.downsample_mask(mask, 2)),
                                _mask([3, 2, 0, 1], 4))
  np.testing.assert_array_equal(np.asarray(student_lib.downsample_mask(mask, 3)),
                                _mask([2, 2, 0, 1], 3))



@pytest.mark.parametrize("shape,window", [((2, 8, 6, 3), (2, 2)), ((2, 7, 5, 3), (2, 2)),
                                          ((1, 10, 9, 2), (3, 2))])
def test_block_max_pool_equals_flax_max_pool(shape, window):
  """Same values and gradients as nn.max_pool padded at the end (its SAME padding for windows of 2)."""
  # Distinct values (no ties), some negative: the edge padding must never win.
  x = jnp.asarray(np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape)
                  .astype(np.float32) - 10.0)
  padding = "SAME" if window == (2, 2) else ((0, -shape[1] % window[0]), (0, -shape[2] % window[1]))
  flax_pool = lambda y: nn.max_pool(y, window, strides=window, padding=padding)
  np.testing.assert_array_equal(student_lib.block_max_pool(x, window), flax_pool(x))
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(flax_pool(x).shape), jnp.float32)
  grads = [jax.grad(lambda y, pool=pool: jnp.sum(weights * pool(y)))(x)
           for pool in (functools.partial(student_lib.block_max_pool, window=window), flax_pool)]
  np.testing.assert_array_equal(grads[0], grads[1])


def test_masked_group_norm_equals_flax_group_norm():
  rng = np.random.default_rng(0)
  x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((4, 9, 5, 8)), jnp.float32)
  frames = jnp.asarray(_mask([9, 4, 1, 6], 9))
  ours = student_lib.MaskedGroupNorm(num_groups=4)
  theirs = nn.GroupNorm(num_groups=4)
  params = theirs.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x, frames)) == jax.tree.map(
      jnp.shape, params)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), jnp.float32),
                        params)
  full_mask = jnp.broadcast_to(frames[:, :, None, None], x.shape)
  np.testing.assert_allclose(ours.apply(params, x, frames),
                             theirs.apply(params, x, mask=full_mask), atol=2e-5, rtol=1e-5)
  weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32) * full_mask
  grads = [jax.grad(lambda p, y, f=f: jnp.sum(weights * f(p, y)), argnums=(0, 1))(params, x)
           for f in (lambda p, y: ours.apply(p, y, frames),
                     lambda p, y: theirs.apply(p, y, mask=full_mask))]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

# --- masking, batch independence, invariances ---------------------------------------------------

def test_padding_never_changes_outputs():
  rng = np.random.default_rng(3)
  clip = _logmel(rng, 1, 37)
  alone = APPLY(_tiny_params(), clip, np.ones((1, 37), bool))
  for f, fill in ((48, np.nan), (64, 50.0)):
    padded = np.full((1, f, M), fill, np.float32)
    padded[:, :37] = clip
    _allclose(APPLY(_tiny_params(), padded, _mask([37], f)), alone)


def test_examples_do_not_depend_on_the_rest_of_the_batch():
  rng = np.random.default_rng(4)
  batch = _logmel(rng, 3, 48)
  lengths = [48, 29, 13]
  out = APPLY(_tiny_params(), batch, _mask(lengths, 48))
  for i, n in enumerate(lengths):
    alone = APPLY(_tiny_params(), batch[i:i + 1, :n], np.ones((1, n), bool))
    _allclose({k: v[i:i + 1] for k, v in out.items()}, alone)


def test_recording_gain_and_channel_colouring_invariance():
  rng = np.random.default_rng(5)
  x = _logmel(rng, 2, 32)
  mask = _mask([32, 21], 32)
  base = APPLY(_tiny_params(), x, mask)
  _allclose(APPLY(_tiny_params(), x + 3.0, mask), base, atol=1e-4)  # a louder recording
  per_bin = TINY.clone(norm_per_bin=True)
  apply = jax.jit(per_bin.apply)
  colouring = np.linspace(-2, 2, M).astype(np.float32)  # a microphone's frequency response
  _allclose(apply(_tiny_params(), x + colouring, mask), apply(_tiny_params(), x, mask), atol=1e-4)


def test_dropout_only_in_training():
  rng = np.random.default_rng(6)
  x, mask = _logmel(rng, 2, 24), _mask([24, 17], 24)
  params = _tiny_params()
  _allclose(APPLY(params, x, mask, train=False), APPLY(params, x, mask), atol=0)
  a = APPLY(params, x, mask, train=True, rngs={"dropout": jax.random.key(1)})
  b = APPLY(params, x, mask, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(np.asarray(a["logits"]), np.asarray(b["logits"]))


def test_empty_example_gives_finite_outputs_and_gradients():
  rng = np.random.default_rng(7)
  x, mask = _logmel(rng, 2, 24), _mask([24, 0], 24)
  labels = np.array([3, 1])

  def loss_fn(params):
    out = TINY.apply(params, x, mask, train=True, rngs={"dropout": jax.random.key(0)})
    return losses.cross_entropy(out["logits"], labels, mask.any(axis=1)), out

  grads, out = jax.jit(jax.grad(loss_fn, has_aux=True))(_tiny_params())
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_bfloat16_compute_runs_close_to_float32():
  rng = np.random.default_rng(8)
  x, mask = _logmel(rng, 2, 24), _mask([24, 15], 24)
  out = jax.jit(TINY.clone(dtype=jnp.bfloat16).apply)(_tiny_params(), x, mask)
  ref = APPLY(_tiny_params(), x, mask)
  assert out["logits"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(ref["logits"]), atol=0.1)


# --- learning -----------------------------------------------------------------------------------

def test_learns_a_spectral_task():
  """Two classes that differ only in where a band of energy sits; lengths vary."""
  rng = np.random.default_rng(9)
  b, f = 16, 32
  labels = np.arange(b) % 2
  x = _logmel(rng, b, f)
  for i, label in enumerate(labels):
    start = 0 if label == 0 else M // 2
    x[i, :, start:start + M // 2] += 3.0
  mask = _mask(rng.integers(12, f + 1, b), f)
  valid = np.ones(b, bool)
  tx = optax.adam(3e-3)
  params = _tiny_params()
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    def loss_fn(p):
      out = TINY.apply(p, x, mask, train=True, rngs={"dropout": key})
      return losses.cross_entropy(out["logits"], labels, valid)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  history = []
  for i in range(40):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    history.append(float(loss))
  logits = APPLY(params, x, mask)["logits"]
  accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels))
  print(f"loss {history[0]:.3f} -> {history[-1]:.3f}, train accuracy {accuracy:.2f}")
  assert history[-1] < 0.3 * history[0]
  assert accuracy == 1.0


def test_spec_augment_zeroes_bands_inside_the_valid_frames():
  x = jnp.ones((64, 50, M))
  lengths = np.full(64, 30)
  out = np.asarray(student_lib.spec_augment(jax.random.key(0), x, _mask(lengths, 50),
                                            time_masks=1, time_width=6, mel_masks=1, mel_width=4))
  for row in out:
    rows_cut = np.flatnonzero((row == 0).all(axis=1))
    cols_cut = np.flatnonzero((row == 0).all(axis=0))
    assert (rows_cut < 30).all()  # time bands lie inside the valid frames...
    assert len(rows_cut) <= 6 and len(cols_cut) <= 4  # ...bands are at most as wide as asked...
    for cut in (rows_cut, cols_cut):  # ...and contiguous
      assert len(cut) == 0 or cut[-1] - cut[0] == len(cut) - 1
    zeros = row == 0
    expected = np.zeros_like(zeros)
    expected[rows_cut] = True
    expected[:, cols_cut] = True
    np.testing.assert_array_equal(zeros, expected)  # nothing else is touched
  widths = [(r == 0).all(axis=1).sum() for r in out]
  assert len(set(widths)) > 1  # widths are drawn per example
  again = student_lib.spec_augment(jax.random.key(0), x, _mask(lengths, 50), 1, 6, 1, 4)
  np.testing.assert_array_equal(out, again)


def test_spec_augment_acts_in_training_only():
  model = TINY.clone(time_masks=2, time_mask_width=8, mel_masks=2, mel_mask_width=4,
                     dropout_rate=0.0)
  params = _tiny_params()
  x = _logmel(np.random.default_rng(0), 2, 40)
  mask = _mask([40, 25], 40)
  plain = APPLY(params, x, mask)["logits"]
  np.testing.assert_allclose(model.apply(params, x, mask)["logits"], plain, atol=1e-5)
  rngs = {"dropout": jax.random.key(3)}
  augmented = model.apply(params, x, mask, train=True, rngs=rngs)["logits"]
  assert not np.allclose(augmented, plain)
  np.testing.assert_allclose(TINY.clone(dropout_rate=0.0).apply(params, x, mask, train=True,
                                                                rngs=rngs)["logits"], plain,
                             atol=1e-5)


def test_warp_mel_moves_a_spectral_peak_by_the_drawn_factor():
  x = np.zeros((32, 5, M), np.float32)
  x[:, :, 8] = 1.0  # a peak in bin 8 of every frame
  out = np.asarray(student_lib.warp_mel(jax.random.key(0), jnp.asarray(x), 0.2))
  peaks = out[:, 0].argmax(axis=1)
  # Output bin m reads input bin m * factor, factor in [0.8, 1.2]: the peak lands in 7..10.
  assert ((peaks >= 7) & (peaks <= 10)).all() and len(set(peaks.tolist())) > 1
  np.testing.assert_array_equal(out[:, 1:], np.repeat(out[:, :1], 4, axis=1))  # all frames alike
  np.testing.assert_allclose(student_lib.warp_mel(jax.random.key(0), jnp.asarray(x), 0.0), x)
  # Interpolation never leaves the input's range.
  assert out.min() >= 0 and out.max() <= 1


def test_stretch_time_rescales_the_valid_frames():
  f = 100
  lengths = np.full(64, 60)
  x = np.broadcast_to(np.arange(f, dtype=np.float32)[None, :, None], (64, f, M)).copy()
  mask = _mask(lengths, f)
  x[~mask] = 0
  out, new_mask = student_lib.stretch_time(jax.random.key(0), jnp.asarray(x), jnp.asarray(mask),
                                           0.25)
  out, new_mask = np.asarray(out), np.asarray(new_mask)
  new_lengths = new_mask.sum(axis=1)
  assert (new_lengths >= 60 / 1.25 - 1).all() and (new_lengths <= 60 / 0.75 + 1).all()
  assert len(set(new_lengths.tolist())) > 1  # rates are drawn per example
  for row, row_mask, n in zip(out, new_mask, new_lengths):
    np.testing.assert_array_equal(row_mask, np.arange(f) < n)  # still a prefix mask
    assert (row[~row_mask] == 0).all()
    ramp = row[row_mask, 0]
    rate = ramp[1] - ramp[0]  # frame t reads input frame t * rate: a ramp of slope rate
    np.testing.assert_allclose(ramp, np.arange(n) * rate, atol=1e-4)
    assert ramp[-1] <= 59 + 1e-4  # nothing is read from the padding
    assert 0.75 - 1e-6 <= rate <= 1.25 + 1e-6


def test_warp_and_stretch_act_in_training_only():
  params = _tiny_params()
  x = _logmel(np.random.default_rng(0), 2, 40)
  mask = _mask([40, 25], 40)
  rngs = {"dropout": jax.random.key(3)}
  masked = TINY.clone(time_masks=2, time_mask_width=8, mel_masks=2, mel_mask_width=4)
  plain_train = masked.apply(params, x, mask, train=True, rngs=rngs)["logits"]
  for kwargs in ({"mel_warp": 0.1}, {"time_stretch": 0.1}):
    model = masked.clone(**kwargs)
    np.testing.assert_allclose(model.apply(params, x, mask)["logits"],
                               APPLY(params, x, mask)["logits"], atol=1e-5)
    assert not np.allclose(model.apply(params, x, mask, train=True, rngs=rngs)["logits"],
                           plain_train)
