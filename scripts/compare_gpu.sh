#!/usr/bin/env bash
# The methods comparison (issue 29) on one GPU in two device commands, each well inside a 9.5-minute limit:
# install longgen and the wheels of .whl/ as scripts/gpu_lane.sh does, run `scripts/compare.py --no-eval` sweeps
# against the installed package from /tmp, then pack the sweeps (manifests, configs, videos; no latents or
# checkpoints) into $OUT as 15 MiB parts, at most 62 MB in all (the videos are left out beyond that).
#
#   bash scripts/compare_gpu.sh 1    # sweep A: gen-l-video, freenoise, direct, freelong, ditctrl, syncos-paper at 6 steps
#   bash scripts/compare_gpu.sh 2    # sweep C: fifo at num_partitions=1; sweep B: glc-paper at 4 steps
#
# Reduced settings, eager (no job's time carries a compile): each method's seconds per planned forward are measured,
# and `compare.py --report-only --full-forwards` projects them to the experiments' own settings (benchmarks/README.md,
# "Methods comparison (issue 29)"). Afterwards, on the CPU: cat A.tgz.part* | tar xz; cat BC.tgz.part* | tar xz; then
# compare.py --report-only. A short device budget can lower the steps and each sweep's limit (the projection reads
# seconds per planned forward, so fewer steps change its precision, not its meaning): COMPARE_STEPS_A (default 6),
# COMPARE_STEPS_B (default 4), COMPARE_SECONDS_A/B/C (defaults 420, 340, 150). Environment: OUT (default /tmp/compare-out), COMPARE_RUNS (where the sweeps go, default
# /tmp), COMPARE_BACKBONE (the backbone overrides; a CPU dry run passes a tiny one), COMPARE_INSTALL=0 (use the Python
# environment as it is).
set -uo pipefail
part=${1:-}
case $part in
    1 | 2) ;;
    *) echo "compare_gpu.sh: give the part, 1 or 2 (got '$part')" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
site=/tmp/longgen-lane-site
out=${OUT:-/tmp/compare-out}
runs=${COMPARE_RUNS:-/tmp}
mkdir -p "$out"
if [ "${COMPARE_INSTALL:-1}" = 1 ]; then
    source "$repo/scripts/gpu_site.sh" || exit 1   # as scripts/gpu_lane.sh installs
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
cd /tmp || exit 1   # import the installed package, never the checkout
read -r -a backbone <<< "${COMPARE_BACKBONE:-backbone=cogvideox-2b backbone.random_weights=true backbone.compile=false}"
common=("${backbone[@]}" save_latents=false checkpoint_every=0 seed=0 "prompt_file=$repo/prompts/storytelling_paper_boat.txt")

# sweep NAME SECONDS METHODS OVERRIDES...: one compare.py --no-eval sweep into $runs/NAME, its log in $out/NAME.log;
# `timeout` ends it (and its longgen child: the whole process group) so that the packing below always runs
sweep() {
    local name=$1 seconds=$2 methods=$3
    shift 3
    timeout -k 10 "$seconds" python3 "$repo/scripts/compare.py" --no-eval --out "$runs/$name" --methods "$methods" \
        "${common[@]}" "$@" > "$out/$name.log" 2>&1
    local status=$?
    tail -n 12 "$out/$name.log"
    return $status
}

# pack NAME DIRS...: $out/NAME.tgz.partNN, with the videos while the whole stays <= 62 MB
pack() {
    local name=$1
    shift
    tar czf "$out/$name.tgz" --exclude='*.safetensors' -C "$runs" "$@"
    [ "$(stat -c%s "$out/$name.tgz")" -le 62000000 ] ||
        tar czf "$out/$name.tgz" --exclude='*.safetensors' --exclude='*.mp4' -C "$runs" "$@"
    split -b 15M -d "$out/$name.tgz" "$out/$name.tgz.part" && rm "$out/$name.tgz"
}

case $part in
    1)
        sweep A "${COMPARE_SECONDS_A:-420}" gen-l-video-4x,freenoise-4x,direct-4x,freelong-4x,ditctrl-4x,syncos-paper-4x \
            "sampler.num_steps=${COMPARE_STEPS_A:-6}"
        a=$?
        pack A A
        ls -l "$out"
        [ $a -eq 0 ] ;;
    2)
        sweep C "${COMPARE_SECONDS_C:-150}" fifo-4x sampler.num_partitions=1
        c=$?
        sweep B "${COMPARE_SECONDS_B:-340}" glc-paper-4x "sampler.num_steps=${COMPARE_STEPS_B:-4}"
        b=$?
        pack BC $(cd "$runs" && ls -d B C 2>/dev/null)
        ls -l "$out"
        [ $c -eq 0 ] && [ $b -eq 0 ] ;;
esac
