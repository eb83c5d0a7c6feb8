#!/usr/bin/env bash
# Train kd_mh on the GPUs of several machines: one JAX process per host (or per GPU), all joined
# by `kd-mh train --jax_distributed` into one job whose device mesh spans every GPU.
#
# Every process runs the same command. Everything a run reads or writes must be at the same path on
# every host: the checkout, the venv, DATA_DIR (and pair_data_dir), a teacher workdir, and WORKDIR
# (orbax writes one checkpoint together from all processes). Use a shared file system or gs://.
#
# Plain ssh (or any launcher): give the coordinator, the process count and each process's id.
#   host-a$ COORDINATOR=host-a:12355 NUM_PROCESSES=2 PROCESS_ID=0 CONFIG=... WORKDIR=/shared/runs/x \
#             bash launch/gpu_multi_host.sh [more `kd-mh train` flags]
#   host-b$ COORDINATOR=host-a:12355 NUM_PROCESSES=2 PROCESS_ID=1 CONFIG=... WORKDIR=/shared/runs/x \
#             bash launch/gpu_multi_host.sh [the same flags]
#   Process 0 listens on COORDINATOR's port; the others must reach it. Each process uses all the
#   GPUs it sees (CUDA_VISIBLE_DEVICES narrows them).
#
# SLURM (srun) or Open MPI 4 (mpirun): coordinator, count and id are detected; nothing to give.
#   srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 \
#     env CONFIG=... WORKDIR=/shared/runs/x bash launch/gpu_multi_host.sh
#   With one task per node this script lets the task drive every GPU of its node
#   (JAX_LOCAL_DEVICE_IDS); with several tasks per node JAX gives task i of a node its GPU i, so
#   every task must see all the node's GPUs (no per-task GPU binding). JAX_COORDINATOR_PORT picks
#   the coordinator's port (default: derived from the job id).
#
# Environment: COORDINATOR, NUM_PROCESSES, PROCESS_ID as above; CONFIG, DATA_DIR, WORKDIR, KD_MH,
# DRY_RUN, XLA_PYTHON_CLIENT_PREALLOCATE as in launch/gpu_single_host.sh, which this script runs.
# The global batch must be a multiple of the total GPU count (and of the process count).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The number of GPUs this process can see (CUDA_VISIBLE_DEVICES, else nvidia-smi).
visible_gpus() {
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    local ids
    IFS=, read -ra ids <<<"${CUDA_VISIBLE_DEVICES}"
    echo "${#ids[@]}"
  else
    nvidia-smi -L | grep -c '^GPU'
  fi
}

# Tasks of this job on this node: 1, or 0 when the launcher does not say.
tasks_on_node() {
  if [[ -n "${OMPI_COMM_WORLD_LOCAL_SIZE:-}" ]]; then
    echo "${OMPI_COMM_WORLD_LOCAL_SIZE}"
  elif [[ -n "${SLURM_NTASKS:-}" && "${SLURM_NTASKS}" == "${SLURM_STEP_NUM_NODES:-}" ]]; then
    echo 1
  else
    echo 0
  fi
}

# A launcher whose variables jax.distributed reads: an srun step, or Open MPI 4's mpirun.
cluster=""
if [[ -n "${SLURM_STEP_NODELIST:-}" && -n "${SLURM_PROCID:-}" ]]; then
  cluster="SLURM"
elif [[ -n "${OMPI_MCA_orte_hnp_uri:-}" ]]; then
  cluster="Open MPI"
fi

flags=(--jax_distributed)
if [[ -n "${COORDINATOR:-}${NUM_PROCESSES:-}${PROCESS_ID:-}" ]]; then
  if [[ -z "${COORDINATOR:-}" || -z "${NUM_PROCESSES:-}" || -z "${PROCESS_ID:-}" ]]; then
    echo "gpu_multi_host.sh: set all three of COORDINATOR (HOST:PORT of process 0)," \
      "NUM_PROCESSES and PROCESS_ID (0 to NUM_PROCESSES-1)" >&2
    exit 2
  fi
  flags+=("--coordinator_address=${COORDINATOR}" "--num_processes=${NUM_PROCESSES}"
          "--process_id=${PROCESS_ID}")
  echo "process ${PROCESS_ID} of ${NUM_PROCESSES}, coordinator ${COORDINATOR}"
elif [[ -n "${cluster}" ]]; then
  echo "process ${SLURM_PROCID:-${OMPI_COMM_WORLD_RANK:-}} of" \
    "${SLURM_NTASKS:-${OMPI_COMM_WORLD_SIZE:-}} (${cluster}: coordinator, count and id detected)"
else
  echo "gpu_multi_host.sh: set COORDINATOR, NUM_PROCESSES and PROCESS_ID, or start it with srun" \
    "or Open MPI 4's mpirun (launch/gpu_single_host.sh trains on one machine)" >&2
  exit 2
fi

# Under a launcher JAX gives each task the GPU of its local rank: a lone task of a node would
# drive only the node's first GPU.
if [[ -n "${cluster}" && -z "${JAX_LOCAL_DEVICE_IDS:-}" && "$(tasks_on_node)" == 1 ]]; then
  n_gpus="$(visible_gpus)"
  if (( n_gpus > 1 )); then
    JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $(( n_gpus - 1 )))"
    export JAX_LOCAL_DEVICE_IDS
    echo "one task on this node: it drives GPUs ${JAX_LOCAL_DEVICE_IDS}"
  fi
fi

exec bash "${here}/gpu_single_host.sh" "${flags[@]}" "$@"
