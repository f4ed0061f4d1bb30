#!/usr/bin/env bash
# Set up the EchoRAG training worker on a GPU host (Ubuntu/Debian with an NVIDIA driver), next to
# vLLM. Run from a checkout of the repository, as root:
#
#   sudo infra/gpu-host/setup.sh                       # install code, venv, config, systemd unit
#   sudo SLACK_SECRET_ARN=… DISCORD_SECRET_ARN=… infra/gpu-host/setup.sh   # + where the chat tokens are
#
# Idempotent: re-running updates the code and dependencies and keeps /etc/echorag/worker.env.
# vLLM itself: `docker compose --env-file /etc/echorag/worker.env -f infra/gpu-host/compose.yaml up -d vllm`
# (or your own install, started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX=/opt/echorag
DATA=/var/lib/echorag
ENV_FILE=/etc/echorag/worker.env
PYTHON="${PYTHON:-python3.11}"

if [[ $EUID -ne 0 ]]; then
  echo "setup.sh: run as root (sudo)" >&2
  exit 1
fi
command -v "$PYTHON" >/dev/null || { echo "setup.sh: $PYTHON not found (install python3.11 and python3.11-venv)" >&2; exit 1; }
command -v nvidia-smi >/dev/null || echo "setup.sh: warning: nvidia-smi not found; training will run on CPU (slow)" >&2

id echorag >/dev/null 2>&1 || useradd --system --home-dir "$DATA" --shell /usr/sbin/nologin echorag
install -d -o echorag -g echorag -m 0750 "$DATA" "$DATA/adapters" "$DATA/hf-cache"
install -d -m 0755 "$PREFIX" /etc/echorag

# Code: a copy of this checkout (no .git, no local data or venv).
tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=data --exclude='__pycache__' -cf - . | tar -C "$PREFIX" -xf -
"$PYTHON" -m venv "$PREFIX/.venv"
"$PREFIX/.venv/bin/pip" install --quiet --upgrade pip
"$PREFIX/.venv/bin/pip" install --quiet -r "$PREFIX/requirements-train.txt"
"$PREFIX/.venv/bin/pip" install --quiet --no-deps -e "$PREFIX"
"$PREFIX/.venv/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'CPU only')"

# Configuration: created once, never overwritten.
if [[ ! -f $ENV_FILE ]]; then
  install -m 0640 -g echorag "$REPO/infra/gpu-host/worker.env.example" "$ENV_FILE"
  echo "setup.sh: wrote $ENV_FILE — fill FEEDBACK_BUCKET, TRAINING_QUEUE_URL, BASE_MODEL, VLLM_URL"
fi

# Chat tokens for announcements: the worker reads `bot_token` from the stack's secrets at run time
# (SLACK_SECRET_ARN / DISCORD_SECRET_ARN, cached 5 minutes), so no token is copied onto the disk.
set_env() {  # set_env NAME VALUE: replace or append NAME=VALUE in the env file
  local name=$1 value=$2
  if grep -q "^${name}=" "$ENV_FILE"; then
    sed -i "s|^${name}=.*|${name}=${value//|/\\|}|" "$ENV_FILE"
  else
    echo "${name}=${value}" >>"$ENV_FILE"
  fi
}
for name in SLACK_SECRET_ARN DISCORD_SECRET_ARN; do
  if [[ -n ${!name:-} ]]; then
    set_env "$name" "${!name}"
    echo "setup.sh: $name set in $ENV_FILE"
  fi
done

install -m 0644 "$REPO/infra/gpu-host/echorag-worker.service" /etc/systemd/system/echorag-worker.service
systemctl daemon-reload
systemctl enable echorag-worker
echo "setup.sh: done. Start with: systemctl restart echorag-worker && journalctl -u echorag-worker -f"
