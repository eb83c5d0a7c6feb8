"""benchmarks/train_speed.py: its PyTorch port computes what the Flax models and losses compute.

Skipped where PyTorch is not installed (the benchmark's own dependency, not the project's).
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import train_speed  # pylint: disable=g-import-not-at-top,wrong-import-position
from kd_mh import losses
from kd_mh.models import student as student_lib
from kd_mh.models import teacher as teacher_lib


def _random_variables(abstract, seed):
  """Random values of the variables' shapes (BatchNorm variances positive): no init compiling."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(abstract, sep="/")
  out = {k: (rng.uniform(0.5, 1.5, v.shape) if k.endswith("/var")
             else rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in flat.items()}
  return out, flax.traverse_util.unflatten_dict(out, sep="/")


def test_student_port_matches_flax():
  # Odd sizes exercise SAME pooling with ceil, prefixes of 21, 7 and 1 frames the masking.
  model = student_lib.Student(conv_features=(8, 16), time_pool=(2, 2), mel_pool=(2, 2),
                              norm_groups=4, rnn_hidden=16, embed_dim=32, attention_hidden=16,
                              teacher_dim=24)
  b, f, m = 3, 21, 18
  rng = np.random.default_rng(0)
  logmel = rng.normal(-4, 2, (b, f, m)).astype(np.float32)
  mask = np.arange(f)[None, :] < np.array([21, 7, 1])[:, None]
  abstract = jax.eval_shape(model.init, jax.random.key(0), logmel, mask)
  flat, variables = _random_variables(abstract, 1)
  want = model.apply(variables, logmel, mask)
  port = train_speed.Student(model, m)
  train_speed.flax_to_torch(flat, port)
  port.eval()
  with torch.no_grad():
    got = port(torch.from_numpy(logmel), torch.from_numpy(mask))
  for key in ("logits", "embedding", "aligned"):
    np.testing.assert_allclose(got[key].numpy(), want[key], atol=2e-5, rtol=1e-4, err_msg=key)


def test_teacher_port_matches_flax():
  model = teacher_lib.Teacher()
  rng = np.random.default_rng(2)
  faces = rng.integers(0, 256, (2, 3, 64, 64, 1), dtype=np.uint8)
  mask = np.array([[True, True, False], [True, False, False]])
  abstract = jax.eval_shape(model.init, jax.random.key(0), faces, mask)
  flat, variables = _random_variables(abstract, 3)
  want = model.apply(variables, faces, mask)
  port = train_speed.Teacher(model)
  train_speed.flax_to_torch(flat, port)
  port.eval()
  with torch.no_grad():
    got = port(torch.from_numpy(faces), torch.from_numpy(mask))
  scale = np.abs(want["logits"]).max()
  for key in ("logits", "embedding"):
    np.testing.assert_allclose(got[key].numpy(), want[key], atol=1e-5 * scale, rtol=1e-4,
                               err_msg=key)


def test_loading_rejects_a_missing_variable():
  model = teacher_lib.Teacher()
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 64, 64, 1), jnp.uint8),
                            jnp.ones((1, 1), bool))
  flat, _ = _random_variables(abstract, 0)
  del flat["params/backbone/head_conv/bias"]
  with pytest.raises(ValueError, match="head_conv.bias"):
    train_speed.flax_to_torch(flat, train_speed.Teacher(model))


def test_losses_match_kd_mh():
  rng = np.random.default_rng(4)
  b, k, d = 6, 7, 5
  s_logits, t_logits = rng.normal(size=(2, b, k)).astype(np.float32)
  aligned, embedding = rng.normal(size=(2, b, d)).astype(np.float32)
  labels = np.array([0, 3, -1, 6, 2, 1], np.int32)
  valid = np.array([True, True, True, True, False, True])
  teacher_valid = np.array([True, False, True, True, True, True])
  config = train_speed.load_config("student").loss
  want, _ = losses.total_loss(
      s_logits, aligned, t_logits, embedding, labels, valid, teacher_mask=teacher_valid,
      temperature=config.temperature, kd_weight=config.kd_weight,
      align_weight=config.align_weight, ce_weight=config.ce_weight, alignment=config.alignment)
  t = lambda x: torch.from_numpy(x)
  got = train_speed.kd_loss({"logits": t(s_logits), "aligned": t(aligned)},
                            {"logits": t(t_logits), "embedding": t(embedding)},
                            t(labels).long(), t(valid), t(teacher_valid), config)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  np.testing.assert_allclose(
      float(train_speed.cross_entropy(t(s_logits), t(labels).long(), t(valid))),
      float(losses.cross_entropy(s_logits, labels, valid)), rtol=1e-5)


@pytest.mark.parametrize("size,window,stride,pads", [
    (60, 3, 2, (0, 1)), (15, 3, 2, (1, 1)), (8, 3, 2, (0, 1)), (15, 1, 2, (0, 0)),
    (5, 3, 1, (1, 1))])
def test_same_pads_known_answers(size, window, stride, pads):
  assert train_speed.same_pads(size, window, stride) == pads


def test_same_max_pool_matches_flax():
  x = np.random.default_rng(5).normal(size=(2, 15, 8, 3)).astype(np.float32)
  want = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
  got = train_speed.same_max_pool(torch.from_numpy(x).permute(0, 3, 1, 2), 3, 2)
  np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), want)


def test_spec_augment_zeroes_bands_inside_the_valid_frames():
  torch.manual_seed(0)
  x = torch.ones(4, 50, 16)
  mask = torch.arange(50)[None, :] < torch.tensor([50, 30, 10, 1])[:, None]
  out = train_speed.spec_augment(x, mask, 2, 10, 2, 4)
  zero_frames = (out == 0).all(dim=2)
  zero_bins = (out == 0).all(dim=1)
  assert (zero_frames.sum(dim=1) <= 20).all()
  assert (zero_bins.sum(dim=1) <= 8).all()
  # Time bands start inside each example's valid frames.
  for i, length in enumerate((50, 30, 10, 1)):
    frames = torch.nonzero(zero_frames[i]).flatten()
    if len(frames):
      assert frames.min() < max(length, 1)
