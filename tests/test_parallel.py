"""The data mesh: shardings, global batches from per-process slices, several devices and processes.

Device counts are fixed when JAX starts, so the 8-device and 2-process checks run in fresh
interpreters with `XLA_FLAGS=--xla_force_host_platform_device_count=N`.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from kd_mh import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code: str, devices: int, *args: str, background: bool = False):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-c", code, *args]
  if background:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


def test_mesh_spans_every_device_with_replicated_state_and_sharded_batches():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == (parallel.DATA_AXIS,) and mesh.devices.size == jax.device_count()
  assert parallel.replicated(mesh).spec == jax.sharding.PartitionSpec()
  assert parallel.data_sharded(mesh).spec == jax.sharding.PartitionSpec(parallel.DATA_AXIS)
  local = {"x": np.arange(12, dtype=np.float32).reshape(4, 3), "m": np.array([1, 0, 1, 1], bool)}
  batch = parallel.global_batch(local, mesh)
  assert batch["x"].sharding == parallel.data_sharded(mesh)
  np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])
  np.testing.assert_array_equal(np.asarray(batch["m"]), local["m"])
  state = parallel.replicate({"w": np.ones(3)}, mesh)
  assert state["w"].sharding == parallel.replicated(mesh)


def test_initialize_distributed_is_a_no_op_unless_enabled():
  parallel.initialize_distributed(False)
  assert jax.process_count() == 1


_EIGHT_DEVICES = """
import json
import jax, jax.numpy as jnp, numpy as np
from kd_mh import parallel
mesh = parallel.make_mesh()
x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
batch = parallel.global_batch({"x": x}, mesh)
rows = sorted((s.index[0].start, s.data.shape[0], s.device.id)
              for s in batch["x"].addressable_shards)
w = parallel.replicate(np.float32([1.0, 2.0, 3.0]), mesh)
step = jax.jit(lambda w, b: jnp.mean(b["x"] @ w), in_shardings=(parallel.replicated(mesh),
               {"x": parallel.data_sharded(mesh)}), out_shardings=parallel.replicated(mesh))
bad = None
try:
  parallel.local_batch_size(12, mesh)
except ValueError as e:
  bad = str(e)
print(json.dumps({"devices": mesh.devices.size, "rows": rows, "mean": float(step(w, batch)),
                  "w_copies": len(w.addressable_shards), "bad": bad,
                  "local": parallel.local_batch_size(16, mesh)}))
"""


def test_eight_devices_hold_two_rows_each_and_compute_the_global_mean():
  out = _run(_EIGHT_DEVICES, 8)
  assert out["devices"] == 8 and out["w_copies"] == 8 and out["local"] == 16
  assert [(start, n) for start, n, _ in out["rows"]] == [(2 * i, 2) for i in range(8)]
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  assert out["mean"] == pytest.approx(float(np.mean(x @ np.float32([1, 2, 3]))), rel=1e-6)
  assert "not divisible by the 8 devices" in out["bad"]


_PROCESS = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from kd_mh import parallel
pid, port = int(sys.argv[1]), sys.argv[2]
parallel.initialize_distributed(True, f"127.0.0.1:{port}", 2, pid)
mesh = parallel.make_mesh()
n = parallel.local_batch_size(16, mesh)
full = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
batch = parallel.global_batch({"x": full[pid * n:(pid + 1) * n]}, mesh)
total = jax.jit(lambda b: jnp.sum(b["x"], axis=0), out_shardings=parallel.replicated(mesh))(batch)
print(json.dumps({"devices": jax.device_count(), "local_devices": jax.local_device_count(),
                  "local": n, "shape": list(batch["x"].shape), "sum": np.asarray(total).tolist()}))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_form_one_global_batch_from_their_halves():
  port = str(_free_port())
  procs = [_run(_PROCESS, 4, str(pid), port, background=True) for pid in range(2)]
  outs = []
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    outs.append(json.loads(stdout.strip().splitlines()[-1]))
  expected = np.arange(16 * 3, dtype=np.float32).reshape(16, 3).sum(axis=0).tolist()
  for out in outs:
    assert out["devices"] == 8 and out["local_devices"] == 4 and out["local"] == 8
    assert out["shape"] == [16, 3] and out["sum"] == expected
