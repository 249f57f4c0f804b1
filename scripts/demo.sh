#!/usr/bin/env bash
# Installs what isl needs, builds it, and predicts fluorescence labels for the bundled
# demo stack (a 256 x 256 crop of a real phase-contrast z-stack, 13 planes) with the
# bundled trained model, averaging the predictions of the stack and its three mirror
# images (--flip-average: 4x the time, seconds on this crop). Prints where the images went;
# preview.tif among them is the picture to open first (input, the three labels, and in
# magenta where they cannot be trusted).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-debian.sh
if [ ! -d build ]; then
  meson setup build --buildtype=release
fi
ninja -C build

model=examples/data/condition-b.h5
out=demo-output
build/tools/isl predict --model "$model" --input examples/data/demo_z13.tif \
  --output-dir "$out" --stats median,mean,entropy --flip-average --preview
echo "demo: predicted images are in $(pwd)/$out (look at $out/preview.tif first)"
