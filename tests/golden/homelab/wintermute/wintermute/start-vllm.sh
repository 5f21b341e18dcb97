#!/usr/bin/env bash
# Rendered by fleetgate from fleet.yaml (deployment wintermute); settings sha256:e9607e1e513ea643.
# Do not edit: change the fleet file and render again.
# Runs vLLM deployment wintermute in Docker (vllm/vllm-openai:v0.32.0) on an NVIDIA GPU.
# Usage: start-vllm.sh start|stop|restart|status|logs [LINES]|run
# HF_TOKEN and other secrets come from the environment or from C:/fleetgate/env.
set -euo pipefail

NAME=wintermute
CONTAINER=fleetgate-wintermute
IMAGE=vllm/vllm-openai:v0.32.0
STATE_DIR=C:/fleetgate
HF_CACHE="$HOME"/.cache/huggingface
VLLM_ARGS=(
  hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4
  --served-model-name llama31-8b-wintermute
  --port 8000
  --max-model-len 16384
  --max-num-seqs 2
  --gpu-memory-utilization 0.92
  --kv-cache-dtype fp8
)
DOCKER_ARGS=(
  --gpus all
  --ipc=host
  -p 8000:8000
  -v "$HF_CACHE:/root/.cache/huggingface"
  -e HF_TOKEN
)

load_env() {
  if [ -f "$STATE_DIR/env" ]; then
    set -a
    # shellcheck source=/dev/null
    . "$STATE_DIR/env"
    set +a
  fi
}

do_start() {
  load_env
  docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  docker run -d --name "$CONTAINER" --restart unless-stopped "${DOCKER_ARGS[@]}" "$IMAGE" "${VLLM_ARGS[@]}"
  echo "$NAME started in container $CONTAINER"
}

do_run() {
  load_env
  exec docker run --rm --name "$CONTAINER" "${DOCKER_ARGS[@]}" "$IMAGE" "${VLLM_ARGS[@]}"
}

do_stop() {
  docker stop -t 30 "$CONTAINER" >/dev/null 2>&1 || true
  docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  echo "$NAME stopped"
}

do_status() {
  local state
  state=$(docker inspect -f '{{.State.Status}}' "$CONTAINER" 2>/dev/null || echo absent)
  echo "$NAME: container $CONTAINER is $state"
  [ "$state" = running ] || return 3
}

do_logs() {
  docker logs --tail "${1:-100}" "$CONTAINER" 2>&1
}

case "${1:-}" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop && do_start ;;
  status) do_status ;;
  logs) do_logs "${2:-100}" ;;
  run) do_run ;;
  *)
    echo "usage: $0 start|stop|restart|status|logs [LINES]|run" >&2
    exit 2
    ;;
esac
