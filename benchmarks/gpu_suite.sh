#!/usr/bin/env bash
# Every GPU figure the README promises, in one run that fits a 10-minute device window.
#
#   bash benchmarks/gpu_suite.sh [--tiny] [--out DIR]
#
# On a GPU machine (from the project root, after `source .devwhl/setup.sh`; see `make bench-gpu`)
# it runs each benchmark at real size with random weights, each under its own time cap, and
# writes one JSON file per part into DIR (default: benchmarks/results/gpu), plus suite.json with
# each part's exit status and seconds. The caps add up to at most 9 minutes of run time.
# --tiny runs every part at toy size on the CPU (the test suite does, so the script cannot rot), in
# two lanes at once.
set -uo pipefail
cd "$(dirname "$0")/.."
tiny=0
out=benchmarks/results/gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) tiny=1 ;;
    --out) [ $# -ge 2 ] || { echo "gpu_suite.sh: --out needs a folder" >&2; exit 2; }
           out="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
py=${PYTHON:-python3}
work=$(mktemp -d /tmp/neuromem_gpu_suite.XXXXXX)
trap 'rm -rf "$work"' EXIT
export RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
mkdir -p "$work/status"

part() {  # part NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2; shift 2
  local start=$SECONDS
  echo "== $name (cap ${cap}s): $*"
  timeout --kill-after=10 "$cap" "$@"
  local code=$?
  echo "\"$name\": {\"exit\": $code, \"seconds\": $((SECONDS - start)), \"cap_s\": $cap}" \
    > "$work/status/$name"
  [ $code -eq 0 ] || echo "!! $name exited with $code (124: over its cap)" >&2
}

parts=(encoders score guidance draft vertex tribe_protocols)
if [ $tiny -eq 1 ]; then
  # Ray start-up is most of the score and draft parts: each leads one lane, so they overlap
  lane_a() {
    part draft 240 $py benchmarks/draft.py --steps 2 --warmup 1 --out "$out/draft.json"
    part vertex 120 $py benchmarks/vertex_corr.py --rows 2048 --naive-vertices 10 \
      --pandas-rows 256 --table "$work/vertex" --out "$out/vertex_corr.json"
    part tribe_protocols 120 $py benchmarks/tribe_protocols.py --images 4 --batch-size 2 \
      --repeats 1 --out "$out/tribe_protocols.json"
  }
  lane_b() {
    part score 240 $py benchmarks/score_throughput.py --n 16 --batch-size 8 --actors 1 \
      --work "$work/score" --out "$out/score_throughput.json"
    part encoders 120 $py benchmarks/encoders.py --iters 1 --repeats 1 --warmup 0 \
      --out "$out/encoders.json"
    part guidance 180 $py benchmarks/guidance.py --steps 2 --batch 1 --repeats 1 \
      --out "$out/guidance.json"
  }
  lane_a > "$work/lane_a.log" 2>&1 &
  lane_b
  wait
  cat "$work/lane_a.log"
else
  # encoder throughput at real size, random weights: ViT-B-32 probe and TRIBE v2's ViT-g
  part encoders 60 $py benchmarks/encoders.py --real-size --out "$out/encoders.json"
  # the scoring job vs the bare loop on 20,000 JPEGs at 256 px, 1 and 2 actors on the GPU
  part score 170 $py benchmarks/score_throughput.py --n 20000 --real-size --batch-size 512 \
    --rows-per-part 4096 --actors 1 2 --work "$work/score" --out "$out/score_throughput.json"
  # guided vs unguided sampling at SD-1.5 size: x0 path, surrogate at half depth, UNet path
  part guidance 90 $py benchmarks/guidance.py --real-size --out "$out/guidance.json"
  # one DRaFT-1 step at 512 px, batch 8: Ray Train vs a bare loop, peak memory
  part draft 120 $py benchmarks/draft.py --real-size --out "$out/draft.json"
  # vertex-level statistics at LaMem size (CPU code: the figure shows what the GPU host adds)
  part vertex 40 $py benchmarks/vertex_corr.py --rows 58000 --cores 16 --table "$work/vertex" \
    --out "$out/vertex_corr.json"
  # TRIBE v2 still-image protocols at real size (ViT-g, 64-frame windows): images/s and peak
  # memory per protocol, one image's forward + backward with gradient checkpointing
  part tribe_protocols 60 $py benchmarks/tribe_protocols.py --real-size --device cuda \
    --images 8 --batch-size 8 --repeats 1 --checkpoint --no-agreement \
    --out "$out/tribe_protocols.json"
fi

{
  echo "{"
  echo "  \"tiny\": $([ $tiny -eq 1 ] && echo true || echo false),"
  echo "  \"created\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"host\": \"$(hostname)\","
  echo "  \"gpu\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)\","
  echo "  \"parts\": {"
  for i in "${!parts[@]}"; do
    sep=","; [ "$i" -eq $((${#parts[@]} - 1)) ] && sep=""
    line=$(cat "$work/status/${parts[$i]}" 2>/dev/null) ||
      line="\"${parts[$i]}\": {\"exit\": 125, \"seconds\": 0, \"cap_s\": 0}"  # never ran
    echo "    $line$sep"
  done
  echo "  }"
  echo "}"
} > "$out/suite.json"
cat "$out/suite.json"
failed=$(grep -c '"exit": [1-9]' "$out/suite.json")
exit $((failed > 0))
