#!/usr/bin/env bash
# First-use set-up: system packages the lab needs, then .venv with the pinned
# dependencies of pyproject.toml.  Idempotent; `make` reruns it when
# pyproject.toml changes.  Works as root directly and under sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null       || need_apt+=(iproute2)
command -v tc >/dev/null       || need_apt+=(iproute2)
command -v ethtool >/dev/null  || need_apt+=(ethtool)
command -v depmod >/dev/null   || need_apt+=(kmod)
command -v ping >/dev/null      || need_apt+=(iputils-ping)   # tests/netns cross-checks the probe RTT against ping
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3 || true)
if [ -z "$PY" ]; then need_apt+=(python3); fi
"${PY:-python3}" -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing system packages: ${need_apt[*]} — run with sudo (sudo make setup)" >&2
        exit 2
    fi
    echo "setup: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    timeout 900 apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    PY=/usr/bin/python3
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PY ($("$PY" --version))"
    "$PY" -m venv .venv
fi
echo "setup: installing pinned dependencies into .venv (torch 2.13.0 CPU; first time takes a few minutes)"
# --progress-bar off keeps logs readable in CI; pip's own timeouts bound each download.
# SDLAB_EXTRAS: more optional extras, comma-separated (ray: `sweep --ray`; gguf: `--models embedded-gguf`,
# llama.cpp built from source, minutes; with either, its tests run instead of skipping).
extras="test${SDLAB_EXTRAS:+,$SDLAB_EXTRAS}"
case ",$extras," in *,gguf,*)
    # llama.cpp built so that a block verify computes each token as a one-token step does (bit for bit;
    # lab/models/llamacpp.py BUILD_FLAGS says why); no cached wheel of another build is taken.
    export CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }-DGGML_LLAMAFILE=OFF -DGGML_CPU_REPACK=OFF"
    export PIP_NO_CACHE_DIR=1 ;;
esac
.venv/bin/pip install --disable-pip-version-check --progress-bar off -q -e ".[$extras]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import torch, transformers, pyroute2, zmq, scipy" \
    || { echo "setup: the .venv is incomplete (see pip's errors above)" >&2; exit 1; }
{ sha256sum pyproject.toml; echo "extras $extras"; } > .venv/.sdlab-installed
echo "setup: done"
