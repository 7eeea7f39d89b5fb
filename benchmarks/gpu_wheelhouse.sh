#!/usr/bin/env bash
# Builds .devwhl/ for the GPU machine (see ../shared/device/): Ray, diffusers, peft, open_clip and
# what else neuromem needs that the machine's image lacks (nilearn, nibabel, himalaya), plus the
# part of neuropythy neuromem reads — its HCP-MMP1 (Glasser) fsaverage files — as a small wheel:
# neuropythy ships as a source distribution only, and its 33 MB of other data would not fit.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
python=${PYTHON:-$root/.venv/bin/python}
bash ../shared/device/make-wheelhouse.sh nilearn nibabel himalaya
data=$("$python" -c "from neuromem.cortex.atlas import neuropythy_data_dir; print(neuropythy_data_dir())")
version=$("$python" -c "from importlib.metadata import version; print(version('neuropythy'))")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
build="$tmp/pkg"
mkdir -p "$build/neuropythy/lib/data/fsaverage/surf" "$build/neuropythy-$version.dist-info"
cp "$data"/lib/data/fsaverage/surf/{lh,rh}.glasser16_atlas.v1_0.mgz "$build/neuropythy/lib/data/fsaverage/surf/"
printf '"""HCP-MMP1 fsaverage files of neuropythy %s only (data for neuromem'"'"'s GPU benchmarks)."""\n' \
  "$version" > "$build/neuropythy/__init__.py"
printf 'Metadata-Version: 2.1\nName: neuropythy\nVersion: %s\nSummary: data subset\n' "$version" \
  > "$build/neuropythy-$version.dist-info/METADATA"
printf 'Wheel-Version: 1.0\nGenerator: neuromem\nRoot-Is-Purelib: true\nTag: py3-none-any\n' \
  > "$build/neuropythy-$version.dist-info/WHEEL"
(cd "$build" && find neuropythy -type f | sed 's/$/,,/' > "neuropythy-$version.dist-info/RECORD" \
  && echo "neuropythy-$version.dist-info/METADATA,," >> "neuropythy-$version.dist-info/RECORD" \
  && echo "neuropythy-$version.dist-info/WHEEL,," >> "neuropythy-$version.dist-info/RECORD" \
  && echo "neuropythy-$version.dist-info/RECORD,," >> "neuropythy-$version.dist-info/RECORD" \
  && "$python" -c "import shutil, sys; shutil.make_archive(sys.argv[1], 'zip', '.')" "$tmp/wheel" \
  && mv "$tmp/wheel.zip" "$root/.devwhl/neuropythy-$version-py3-none-any.whl")
du -sh .devwhl
