#!/usr/bin/env bash
# Installs everything jittor-lora-align needs, in one command:
#   Java (METEOR 1.5 runs on it), OpenMPI (Jittor's training on several processes, under
#   mpirun, compiles its MPI ops with mpicc), the pinned Python packages (requirements.txt, and the test
#   clients transformers + peft of requirements-test.txt), this project, and a Jittor warm-up
#   (its first import compiles its core for 1-2 minutes and may ask for one rerun).
# Safe to run again. Non-interactive (CI=true, no stdin needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! command -v java >/dev/null 2>&1; then
  echo "== Java not found: installing a headless JRE (needed for METEOR) =="
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends default-jre-headless
  else
    echo "error: install Java 17 (e.g. openjdk-17-jre-headless) yourself, then rerun" >&2
    exit 1
  fi
fi
java -version 2>&1 | head -1

if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
  echo "== OpenMPI not found: installing it (Jittor trains on several processes under mpirun) =="
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openmpi-bin libopenmpi-dev
  else
    echo "warning: install OpenMPI (mpirun and mpicc) yourself to train Jittor on several" \
         "processes; everything else works without it" >&2
  fi
fi
command -v mpirun >/dev/null 2>&1 && mpirun --version 2>&1 | head -1

echo "== Python packages (requirements.txt, and the test clients of requirements-test.txt) =="
"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
echo "== this project (editable) =="
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps -e .
echo "== torchvision (the originals of Jittor's ported models, for alignment.auto_diff) =="
# Where the plain import fails (PyPI's wheel is a CUDA build; beside a CPU-only torch its import
# fails and would break transformers), the pinned release goes into a folder off the path that
# only alignment/torchvision_ports.py reads.
if ! "$PYTHON" -c "import torchvision" >/dev/null 2>&1; then
  TORCHVISION_DIR=$("$PYTHON" -c "from alignment.torchvision_ports import private_dir; print(private_dir())")
  if [ ! -d "$TORCHVISION_DIR/torchvision" ]; then
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --target "$TORCHVISION_DIR" torchvision==0.28.0
  fi
  echo "torchvision 0.28.0 in $TORCHVISION_DIR"
fi
echo "== Jittor warm-up =="
"$PYTHON" scripts/jittor_warmup.py
echo "installed."
