#!/usr/bin/env bash
# DMT / flat training on a Cloud TPU pod slice: the same command on every TPU-VM worker.
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://bucket/runs/dmt1 bash launch/tpu_pod.sh [main.py flags...]
#   SYNC=1 SETUP="pip install -e ." TPU_NAME=... ZONE=... WORKDIR=... bash launch/tpu_pod.sh
#
# Runs `gcloud compute tpus tpu-vm ssh $TPU_NAME --worker=all --command=...`; on each worker
# `experiments/main.py --distributed=auto` lets jax.distributed.initialize() find the coordinator,
# process count and process id from the TPU metadata. One process per worker owning its local chips:
# host level = workers, device level = each worker's chips (tower groups = one worker's chips).
#
# Variables (environment of this script):
#   TPU_NAME      required: TPU VM / pod slice name.
#   ZONE          required: its zone, e.g. us-central2-b.
#   PROJECT       GCP project (default: gcloud's configured project).
#   REPO_DIR      repository path on the workers (default: dmt_jax, relative to the remote home).
#   PYTHON        interpreter on the workers with dmt_jax installed (default: python3).
#   CONFIG        config file (default experiments/configs/dmt_dlrm.py); CONFIG_ARG: optional ":arg".
#   WORKDIR       required: run directory every worker can write, normally gs://... (checkpoints, metrics).
#   RACKS         rack count: >1 adds a rack level above the worker (host) level, e.g. one rack per slice
#                 or per group of workers; passed as --config.${RACKS_FIELD}=$RACKS. Default 1 (no flag).
#   RACKS_FIELD   config field that holds the rack count (default: racks).
#   EXTRA_ARGS    extra main.py flags as one string (word-split); script arguments are appended too.
#   SYNC          1: first copy this checkout to REPO_DIR on every worker with tpu-vm scp (default 0).
#   SETUP         shell command run in REPO_DIR on each worker before training (default: none),
#                 e.g. "pip install -e ." after SYNC=1.
#   LOG_FILE      per-worker log file on the workers (default: none; output streams to this terminal).
#   XLA_FLAGS, LIBTPU_INIT_ARGS   forwarded to the workers when set.
#
# Failure: if one worker's process dies, dmt_jax.distributed's fail-fast hook / heartbeat timeout end the
# others, and gcloud exits non-zero. Ctrl-C stops only the local ssh sessions; to clean up leftovers run
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="pkill -f experiments/main.py"

set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM / pod slice name}"
: "${ZONE:?set ZONE to the TPU zone}"
: "${WORKDIR:?set WORKDIR to a directory all workers share, e.g. gs://bucket/runs/name}"
PROJECT="${PROJECT:-}"
REPO_DIR="${REPO_DIR:-dmt_jax}"
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-experiments/configs/dmt_dlrm.py}"
CONFIG_ARG="${CONFIG_ARG:-}"
RACKS="${RACKS:-1}"
RACKS_FIELD="${RACKS_FIELD:-racks}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
SYNC="${SYNC:-0}"
SETUP="${SETUP:-}"
LOG_FILE="${LOG_FILE:-}"

GCLOUD=(gcloud compute tpus tpu-vm)
LOCATION=("--zone=${ZONE}")
if [[ -n "${PROJECT}" ]]; then
  LOCATION+=("--project=${PROJECT}")
fi

ARGS=(--distributed=auto "--config=${CONFIG}${CONFIG_ARG}" "--workdir=${WORKDIR}")
if (( RACKS > 1 )); then
  ARGS+=("--config.${RACKS_FIELD}=${RACKS}")
fi
read -r -a EXTRA <<< "${EXTRA_ARGS}"
ARGS+=("${EXTRA[@]}" "$@")

# Build the remote command with every word quoted for the remote shell.
ENV_PREFIX="JAX_PLATFORMS=tpu"
for var in XLA_FLAGS LIBTPU_INIT_ARGS; do
  if [[ -n "${!var:-}" ]]; then
    ENV_PREFIX+=" ${var}=$(printf '%q' "${!var}")"
  fi
done
REMOTE="cd $(printf '%q' "${REPO_DIR}") && "
if [[ -n "${SETUP}" ]]; then
  REMOTE+="{ ${SETUP}; } && "
fi
REMOTE+="${ENV_PREFIX} $(printf '%q' "${PYTHON}") -u experiments/main.py"
for a in "${ARGS[@]}"; do
  REMOTE+=" $(printf '%q' "${a}")"
done
if [[ -n "${LOG_FILE}" ]]; then
  REMOTE+=" > $(printf '%q' "${LOG_FILE}") 2>&1"
fi

if [[ "${SYNC}" == 1 ]]; then
  echo "tpu_pod: copying $(pwd) to ${TPU_NAME}:${REPO_DIR} on all workers"
  "${GCLOUD[@]}" ssh "${TPU_NAME}" "${LOCATION[@]}" --worker=all --command="mkdir -p $(printf '%q' "${REPO_DIR}")"
  "${GCLOUD[@]}" scp ./* "${TPU_NAME}:${REPO_DIR}/" "${LOCATION[@]}" --worker=all --recurse
fi

echo "tpu_pod: on every worker of ${TPU_NAME}: ${REMOTE}"
exec "${GCLOUD[@]}" ssh "${TPU_NAME}" "${LOCATION[@]}" --worker=all --command="${REMOTE}"
