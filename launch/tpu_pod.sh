#!/usr/bin/env bash
# Train kd_mh on a Cloud TPU VM: one host or a pod slice of several workers. Run from the
# repository root of a git checkout, on a machine with the gcloud CLI signed in to the project.
#
#   TPU_NAME=my-tpu ZONE=us-central2-b bash launch/tpu_pod.sh install
#       copies this checkout's files (git-tracked and untracked-but-not-ignored) to every worker,
#       makes a venv there with the README's requirements, adds JAX's TPU wheels
#       (jax[tpu] at the jax version pinned in requirements.txt) and fetches the FER2013 teacher
#       weights into each worker's cache; rerun it after changing the code
#   LOCAL_TFDS=out/cremad/tfds DATA_DIR=gs://BUCKET/kd_mh/cremad/tfds bash launch/tpu_pod.sh upload
#       copies a prepared corpus (`kd-mh prep --out=OUT` writes OUT/tfds) to Cloud Storage
#   TPU_NAME=my-tpu ZONE=us-central2-b CONFIG=configs/teacher_finetune.py:corpus=cremad \
#     DATA_DIR=gs://BUCKET/kd_mh/cremad/tfds WORKDIR=gs://BUCKET/kd_mh/runs/teacher_cremad \
#     bash launch/tpu_pod.sh train [more `kd-mh train` flags, e.g. --config.batch_size=64]
#       runs the same `kd-mh train --jax_distributed` on every worker (`--worker=all`); the
#       coordinator, process count and ids are detected on Cloud TPU. Rerunning resumes.
#   TPU_NAME=my-tpu ZONE=us-central2-b bash launch/tpu_pod.sh stop
#       ends a run started with DETACH=1 on every worker (a TPU serves one run at a time)
#
# Every worker reads DATA_DIR (and any pair_data_dir or teacher workdir in CONFIG) and writes one
# shared WORKDIR, so give gs:// paths: kd_mh reads them through TensorFlow's GCS file system and
# orbax writes checkpoint arrays through TensorStore's; the workers' service account needs read
# access to the data and write access to the workdir.
#
# Environment (default in brackets):
#   TPU_NAME, ZONE  the TPU VM and its zone (install, train, stop)
#   LOCAL_TFDS      the prepared OUT/tfds to upload to DATA_DIR (upload)
#   PROJECT         Google Cloud project                         [gcloud's configured one]
#   GCLOUD_FLAGS    more flags for `gcloud compute tpus tpu-vm ssh/scp`, e.g. --tunnel-through-iap
#   REMOTE_DIR      the checkout on the workers, relative to the home directory  [kd_mh]
#   PYTHON          the workers' Python 3.11 for the venv         [python3.11]
#   CONFIG, DATA_DIR, WORKDIR  as in launch/gpu_single_host.sh; WORKDIR is required here
#   DETACH=1        train in the background on every worker (log: ~/kd_mh_train.log), so that a
#                   dropped ssh connection does not end the run; `tpu_pod.sh stop` ends it
#   DRY_RUN=1       print the commands and stop
#
# The global batch is split over all TPU devices of the slice (jax.device_count()): batch_size and
# eval_batch_size must be multiples of it.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBTPU_FIND_LINKS="https://storage.googleapis.com/jax-releases/libtpu_releases.html"
remote_dir="${REMOTE_DIR:-kd_mh}"

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

# The arguments as one shell command line, quoted where needed.
quote_args() {
  local arg out=()
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+=("${arg}"); else out+=("$(printf '%q' "${arg}")"); fi
  done
  echo "${out[*]}"
}

# Prints a command before it runs; the worker script (printed by on_workers) is left out.
show() {
  local arg out=()
  for arg in "$@"; do
    if [[ "${arg}" == --command=* ]]; then out+=('--command="<the lines above>"'); else out+=("$(quote_args "${arg}")"); fi
  done
  echo "+ ${out[*]}"
}

run() {
  show "$@"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    "$@"
  fi
}

# gcloud compute tpus tpu-vm SUBCOMMAND ... on every worker of the TPU VM.
tpu_vm() {
  local subcommand="$1"
  shift
  [[ -n "${TPU_NAME:-}" && -n "${ZONE:-}" ]] || die "set TPU_NAME and ZONE"
  local extra=()
  read -ra extra <<<"${GCLOUD_FLAGS:-}"
  run gcloud compute tpus tpu-vm "${subcommand}" "$@" --worker=all "--zone=${ZONE}" \
    ${PROJECT:+"--project=${PROJECT}"} "${extra[@]}"
}

# Runs a bash script on every worker.
on_workers() {
  echo "on every worker of ${TPU_NAME:-?}:"
  sed 's/^/  | /' <<<"$1"
  tpu_vm ssh "${TPU_NAME:-}" "--command=$1"
}

install() {
  local jax_version
  jax_version="$(sed -n 's/^jax==//p' "${repo}/requirements.txt")"
  [[ -n "${jax_version}" ]] || die "no jax==VERSION line in ${repo}/requirements.txt"
  git -C "${repo}" rev-parse --git-dir >/dev/null 2>&1 || die "${repo} is not a git checkout"
  local tmp
  tmp="$(mktemp -d)"
  trap "rm -rf $(printf '%q' "${tmp}")" EXIT
  # The checkout as the working tree has it; ignored paths (.venv, prepared data, runs) stay behind.
  echo "+ git ls-files --cached --others --exclude-standard | tar -czf ${tmp}/kd_mh.tar.gz"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    git -C "${repo}" ls-files -z --cached --others --exclude-standard \
      | tar -C "${repo}" --null --ignore-failed-read -T - -czf "${tmp}/kd_mh.tar.gz"
  fi
  tpu_vm scp "${tmp}/kd_mh.tar.gz" "${TPU_NAME}:kd_mh.tar.gz"
  local python="${PYTHON:-python3.11}"
  on_workers "set -euo pipefail
command -v $(quote_args "${python}") >/dev/null || { echo \"no ${python} on \$(hostname): install Python 3.11 (on Ubuntu: sudo apt-get install -y python3.11 python3.11-venv) or set PYTHON\" >&2; exit 2; }
mkdir -p ~/$(quote_args "${remote_dir}")
tar -xzf ~/kd_mh.tar.gz -C ~/$(quote_args "${remote_dir}")
cd ~/$(quote_args "${remote_dir}")
[ -x .venv/bin/python ] || $(quote_args "${python}") -m venv .venv
.venv/bin/python -m pip install -U pip
.venv/bin/pip install -r requirements.txt
.venv/bin/pip install -U 'jax[tpu]==${jax_version}' -f ${LIBTPU_FIND_LINKS}
# On the CPU: fetching the weights needs no TPU, and leaves it free for training.
JAX_PLATFORMS=cpu .venv/bin/python -c 'from kd_mh.models import pretrained; pretrained.load_teacher_variables()'
echo \"\$(hostname): kd_mh installed in ~/${remote_dir}\""
}

upload() {
  [[ -n "${LOCAL_TFDS:-}" && -n "${DATA_DIR:-}" ]] || die "set LOCAL_TFDS (OUT/tfds of kd-mh prep) and DATA_DIR (gs://...)"
  compgen -G "${LOCAL_TFDS}/kd_mh_*" >/dev/null || die "${LOCAL_TFDS} holds no kd_mh_* corpus (expected OUT/tfds of kd-mh prep)"
  run gcloud storage rsync --recursive "${LOCAL_TFDS}" "${DATA_DIR}" ${PROJECT:+"--project=${PROJECT}"}
  echo "data_dir=${DATA_DIR}"
}

train() {
  [[ -n "${WORKDIR:-}" ]] || die "set WORKDIR (gs://BUCKET/...: every worker writes the same checkpoints)"
  local config="${CONFIG:-configs/student_kd.py}"
  if [[ -n "${DATA_DIR:-}" ]]; then
    if [[ "${config}" == *:* ]]; then config+=",data_dir=${DATA_DIR}"; else config+=":data_dir=${DATA_DIR}"; fi
  fi
  [[ "${WORKDIR}" == gs://* ]] || echo "tpu_pod.sh: warning: WORKDIR ${WORKDIR} is not on gs://;" \
    "it must be one directory shared by every worker" >&2
  [[ "${config}" == *data_dir=gs://* ]] || echo "tpu_pod.sh: warning: no gs:// data_dir in" \
    "${config}; the data must be at that path on every worker" >&2
  local cmd=(.venv/bin/kd-mh train "--config=${config}" "--workdir=${WORKDIR}" --jax_distributed "$@")
  local line
  line="cd ~/$(quote_args "${remote_dir}") && $(quote_args "${cmd[@]}")"
  if [[ "${DETACH:-0}" == 1 ]]; then
    line="cd ~/$(quote_args "${remote_dir}") && { nohup $(quote_args "${cmd[@]}") > ~/kd_mh_train.log 2>&1 < /dev/null & echo \$! > ~/kd_mh_train.pid; echo \"\$(hostname): training in the background, log ~/kd_mh_train.log\"; }"
  fi
  on_workers "${line}"
}

stop() {
  on_workers 'if [ -f ~/kd_mh_train.pid ] && kill "$(cat ~/kd_mh_train.pid)" 2>/dev/null; then
  echo "$(hostname): stopped"
else
  echo "$(hostname): no background run"
fi
rm -f ~/kd_mh_train.pid'
}

case "${1:-}" in
  install | upload | stop)
    (( $# == 1 )) || die "$1 takes no arguments"
    "$1" ;;
  train) shift; train "$@" ;;
  *) die "usage: bash launch/tpu_pod.sh install|upload|train [kd-mh train flags]|stop (see the header of this file)" ;;
esac
