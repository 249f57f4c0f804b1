#!/usr/bin/env bash
# Installs every Debian package that isl's build, tests, benchmarks and bindings need.
# Idempotent; run as root (or with sudo) on Debian 12 (bookworm).
set -euo pipefail

packages=(
  build-essential pkg-config meson ninja-build
  libdnnl-dev libhdf5-dev libtiff-dev check libxxhash-dev
  swig python3-dev python3-numpy python3-h5py python3-pytest python3-torch
  python3-tifffile python3-pil python3-scipy
  libpng-dev chromium
  default-jdk-headless junit5
  abigail-tools doxygen valgrind
  python3-onnx python3-yaml python3-jsonschema libssl-dev libpng-dev libxml2-dev
  imagej xvfb xauth
  libopenmpi-dev openmpi-bin
  clang libclang-rt-dev libomp-dev
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
