#!/usr/bin/env bash
# Set up this checkout on a fresh machine: Debian's Fashion-MNIST, a .venv with the pinned torch pair,
# and this package (editable). `bash scripts/setup.sh dev` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's dataset-fashion-mnist" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST not found; run 'apt-get install dataset-fashion-mnist' as root" \
         "or point TTA_FASHION_MNIST / --data-root at the IDX files" >&2
  fi
fi

python=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# The pinned pair this project is tested with (taken from the machine's local wheel store when present).
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || "${pip[@]}" torch==2.14.1 torchvision==0.29.1
if [ -n "$extras" ]; then "${pip[@]}" -e ".[$extras]"; else "${pip[@]}" -e .; fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
