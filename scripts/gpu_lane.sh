#!/usr/bin/env bash
# The GPU lane (tests/gpu): install longgen and the wheels the offline GPU image lacks (.whl/, made by
# scripts/gpu_wheels.sh on a machine with pip access), then run the lane against the installed package from
# outside the source tree. Prints a Markdown block for benchmarks/gpu-lane.md at the end.
#
#   bash scripts/gpu_lane.sh                      # the whole lane: parallel part, then the cases that need the GPU alone
#   bash scripts/gpu_lane.sh -k "cog and syncos"  # a selection (pytest -k)
#
# Environment: LANE_WORKERS (parallel pytest workers, default 3: each case runs full-size models, and more at once ran the
# H200 out of memory), LANE_COMMIT (recorded in the report; the commit
# of the checkout when git is there), OUT (where the JUnit XML and the report go; default ./lane-out).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
site=/tmp/longgen-lane-site
out=${OUT:-$repo/lane-out}
mkdir -p "$out" "$site"
commit=${LANE_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}

started=$(date +%s)
source "$repo/scripts/gpu_site.sh" || exit $?   # .whl/'s wheels, ffmpeg and this checkout into $site, every time
export PYTHONUNBUFFERED=1 LANE_LOG=$out/lane-failures.log
cd /tmp || exit 1   # import the installed package, never the checkout
python3 -c "import longgen, sys, torch; torch.cuda.is_available() or sys.exit('gpu_lane: no CUDA GPU is visible: the lane runs on a GPU machine'); assert '$site' in longgen.__file__, longgen.__file__; print('longgen from', longgen.__file__, '| torch', torch.__version__, '|', torch.cuda.get_device_name())" || exit 1

tests=$repo/tests/gpu
common=(-p no:cacheprovider -rA -o "addopts=" --rootdir "$repo/tests/gpu")
python3 -m pytest "$tests" "${common[@]}" -m "gpu and not alone" -n "${LANE_WORKERS:-3}" --junitxml="$out/lane-parallel.xml" "$@"
first=$?
python3 -m pytest "$tests" "${common[@]}" -m "gpu and alone" --junitxml="$out/lane-alone.xml" "$@"
second=$?
python3 "$repo/scripts/lane_report.py" --commit "$commit" --minutes "$(( ($(date +%s) - started + 30) / 60 ))" \
    "$out/lane-parallel.xml" "$out/lane-alone.xml" | tee "$out/lane-report.md"
# pytest exit 5: nothing selected in that part (a -k selection), not a failure
[ "$first" -eq 0 -o "$first" -eq 5 ] && [ "$second" -eq 0 -o "$second" -eq 5 ]
