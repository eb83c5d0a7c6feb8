#!/usr/bin/env bash
# Train kd_mh on every GPU of one machine: one process, whose device mesh spans all local GPUs.
#
# Usage (from the repository root, after the README's install):
#   CONFIG=configs/student_kd.py:corpus=cremad,teacher=runs/teacher_cremad \
#   DATA_DIR=out/cremad/tfds WORKDIR=runs/student_cremad \
#   bash launch/gpu_single_host.sh [more `kd-mh train` flags, e.g. --config.batch_size=64]
#
# GPU set-up, once, in the same venv (the jax version is the one pinned in requirements.txt):
#   pip install -U "jax[cuda12]==0.10.2"
#   python -c "import jax; print(jax.devices())"      # lists every GPU
# Without a GPU the same command trains on the CPU.
#
# Environment (default in brackets):
#   CONFIG     config file and its :arguments                              [configs/student_kd.py]
#   DATA_DIR   the prepared corpus's tfds directory (`kd-mh prep --out=OUT` -> OUT/tfds), appended
#              to CONFIG's arguments as data_dir=DATA_DIR                  [the config's own]
#   WORKDIR    checkpoints, config.json, TensorBoard events; rerunning resumes  [runs/<config name>]
#   KD_MH      the kd-mh command               [kd-mh on PATH, else .venv/bin/kd-mh of this checkout]
#   DRY_RUN=1  print the command and stop
#   CUDA_VISIBLE_DEVICES            the GPUs to use                        [all]
#   XLA_PYTHON_CLIENT_PREALLOCATE   JAX reserves 75% of each GPU's memory when it starts; set it to
#              false where the GPUs are shared with other jobs (memory taken as needed)
#
# The global batch (config.batch_size, config.eval_batch_size) is split over the GPUs: both must be
# multiples of the GPU count, or the run stops at once naming the numbers. The learning rate and
# schedule are not rescaled when the batch size changes.
#
# Exit status: that of `kd-mh train` (0 when done; 1 when it stopped, e.g. on a non-finite loss, with
# the reason on stderr); 2 here when there is no kd-mh command.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

config="${CONFIG:-configs/student_kd.py}"
if [[ -n "${DATA_DIR:-}" ]]; then
  # Later config arguments win, so this overrides a data_dir already in CONFIG.
  if [[ "${config}" == *:* ]]; then config+=",data_dir=${DATA_DIR}"; else config+=":data_dir=${DATA_DIR}"; fi
fi
config_file="${config%%:*}"
workdir="${WORKDIR:-runs/$(basename "${config_file}" .py)}"

kd_mh="${KD_MH:-}"
if [[ -z "${kd_mh}" ]]; then
  if command -v kd-mh >/dev/null 2>&1; then
    kd_mh="kd-mh"
  elif [[ -x "${repo}/.venv/bin/kd-mh" ]]; then
    kd_mh="${repo}/.venv/bin/kd-mh"
  else
    echo "gpu_single_host.sh: no kd-mh command; activate the venv of the README's install or set KD_MH" >&2
    exit 2
  fi
fi

# Prints a command line that can be pasted back into a shell.
show() {
  local arg out=()
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+=("${arg}"); else out+=("$(printf '%q' "${arg}")"); fi
  done
  echo "+ ${out[*]}"
}

cmd=("${kd_mh}" train "--config=${config}" "--workdir=${workdir}" "$@")
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<all>}" \
  "XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-<default>}"
show "${cmd[@]}"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exit 0
fi
exec "${cmd[@]}"
