# Shared by scripts/train-condition-b.sh and scripts/cv-condition-b.sh (sourced, not run):
# the checks and the dataset both train on.

# condition_b_prepare NAME DATA ISL RUN: checks that the well is at DATA (NAME names the
# calling script in the message), builds isl if ISL is missing, and builds RUN/data.h5
# from the well's labelled columns 0..639 unless it exists.
condition_b_prepare() {
  local name=$1 data=$2 isl=$3 run=$4
  if [ ! -f "$data/phase_contrast_z13.tif" ]; then
    echo "$name: the well is not at $data (set ISL_SHARED_DIR)" >&2
    exit 1
  fi
  if [ ! -x "$isl" ]; then
    [ -d build ] || meson setup build --buildtype=release
    ninja -C build
  fi
  mkdir -p "$run"
  if [ ! -f "$run/data.h5" ]; then
    "$isl" dataset build --input "$data/phase_contrast_z13.tif" \
      --well condition_b_well_a4 --condition B \
      --target "dapi_confocal=$data/dapi_confocal_train_cols0-639.tif:0,0" \
      --target "map2_confocal=$data/map2_confocal_train_cols0-639.tif:0,0" \
      --target "nfh_confocal=$data/nfh_confocal_train_cols0-639.tif:0,0" \
      -o "$run/data.h5"
  fi
}
