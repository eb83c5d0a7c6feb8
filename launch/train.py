"""kd-mh train: train the teacher or the student from a config file.

  kd-mh train --config=configs/student_kd.py:runlocal --workdir=runs/student_local
  kd-mh train --config=configs/teacher_finetune.py:data_dir=out/demo/tfds --workdir=runs/teacher \
      --config.num_train_steps=500

`--config=FILE.py:ARG` passes ARG to the file's get_config; `--config.a.b=VALUE` overrides any
field. Rerunning the same command resumes from the workdir's latest checkpoint. With
`--jax_distributed` every process of a multi-process job runs this same command; the coordinator,
process count and id are detected on TPU pods and SLURM / Open MPI / Kubernetes clusters, or given
with --coordinator_address, --num_processes and --process_id.

Exit codes: 0 done, 1 training stopped on a non-finite loss, 2 on misuse (flags, or a config or
corpus that cannot be used: the message names it).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kd_mh import parallel
from kd_mh import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py[:ARG]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, config.json and TensorBoard "
                               "event files go (an existing one is resumed)")
_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False,
                                 "join a multi-process job (jax.distributed.initialize) first")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "with --jax_distributed: HOST:PORT of process 0 (default: "
                                   "detected from the cluster environment)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "with --jax_distributed: processes in the job (default: "
                                      "detected)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "with --jax_distributed: this process's id (default: detected)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
  # Before anything touches a device.
  parallel.initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value)
  logging.set_verbosity(logging.INFO)
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.NonFiniteError as e:
    print(f"kd-mh train: {e}", file=sys.stderr)
    return 1
  except ValueError as e:  # a config or data problem, named by the message
    logging.debug("kd-mh train failed", exc_info=True)
    print(f"kd-mh train: error: {e}", file=sys.stderr)
    return 2
  evaluation = ", ".join(f"{k} {v:.4f}" for k, v in result["eval"].items())
  print(f"kd-mh train: step {result['step']} in {_WORKDIR.value}"
        + (f"; validation: {evaluation}" if evaluation else ""))
  return 0
