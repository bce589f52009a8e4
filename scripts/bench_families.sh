#!/usr/bin/env bash
# Issue 26's GPU rows for the third and fourth families in one command on one H200 (random weights, nothing
# downloaded): the attention kernels at each model's real shape, then per family the forward TFLOP/s against the
# matmul ceiling and W1 (gen-l-video 4x) per-step time with the 50-step run projected (scripts/bench.py's rules).
# Installs the wheels of .whl/ and longgen as scripts/gpu_lane.sh does and runs the installed package from /tmp.
#
#   bash scripts/bench_families.sh          # GPU machine: run(..., carry=[".whl"]); rows in $OUT/families.md
#   bash scripts/bench_families.sh --dry    # CPU: the tiny variants through the same stages (nothing installed)
#
# Stages, most valuable first; each writes its JSON as soon as it has a row (bench.py: after the forward, again after
# W1), and $OUT/families.md is rebuilt after every stage, so a stage cut short still leaves the rows before it:
#   1. attention probe: hunyuan-1.5 (with its mask, without, fa3 on the valid prefix), wan2.2-ti2v-5b, wan2.2-a14b
#   2. wan2.2-ti2v-5b: forward, then up to 2 measured W1 steps (~21 s each)
#   3. hunyuanvideo-1.5: forward, then 1 measured W1 step (~1-2 min) only if it ends before the A14B's reserve
#   4. wan2.2-t2v-a14b (both 14B experts resident): forward of the high-noise expert; its W1 step (~4-5 min) cannot
#      fit, so W1 is projected from the forward (50 x 11 windows x 2 x s/forward; both experts have one architecture)
# Every stage runs under `timeout` so the ones after it keep their reserve (RESERVE_HY, RESERVE_A14B seconds);
# BUDGET_S (default 540) is the whole command's time, installation included.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/bench-out}
budget=${BUDGET_S:-540}
reserve_hy=${RESERVE_HY:-130}
reserve_a14b=${RESERVE_A14B:-170}
start=$(date +%s)
mkdir -p "$out"

if [ "${1:-}" = "--dry" ]; then
    py=${PYTHON:-python3}
    ti2v=tiny-wan22-ti2v hy=tiny-hunyuan15 a14b=tiny-wan22-a14b tiny=--tiny
else
    site=/tmp/longgen-bench-site
    source "$repo/scripts/gpu_site.sh" || exit 1   # .whl/'s wheels, ffmpeg and this checkout into $site
    py=python3
    ti2v=wan2.2-ti2v-5b hy=hunyuanvideo-1.5 a14b=wan2.2-t2v-a14b tiny=
fi
export PYTHONUNBUFFERED=1
cd /tmp || exit 1   # import the installed package, never the checkout
"$py" -c "import longgen, torch; print('longgen from', longgen.__file__, '| torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" || exit 1

# stage NAME RESERVE COMMAND...: run COMMAND until RESERVE seconds before the budget ends, log it, rebuild the report
stage() {
    local name=$1 reserve=$2
    shift 2
    local left=$(( start + budget - reserve - $(date +%s) ))
    if [ "$left" -lt 30 ]; then
        echo "== $name skipped: $left s before its reserve" | tee -a "$out/stages.log"
        return
    fi
    echo "== $name: up to $left s, at $(( $(date +%s) - start )) s" | tee -a "$out/stages.log"
    timeout -k 10 "$left" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.log"
    echo "== $name: rc $rc, done at $(( $(date +%s) - start )) s" | tee -a "$out/stages.log"
    "$py" "$repo/scripts/families_report.py" "$out" > /dev/null
}

bench=("$py" "$repo/scripts/bench.py" --workload W1 --forward-batch 1 --no-decode --no-markdown)
stage attention $(( reserve_hy + reserve_a14b + 120 )) \
    "$py" "$repo/scripts/attention_probe.py" --shape hunyuan-1.5 wan2.2-ti2v-5b wan2.2-a14b $tiny --repeats 5 \
    --json "$out/attention.json"
stage "$ti2v" $(( reserve_hy + reserve_a14b )) "${bench[@]}" --backbone "$ti2v" --steps 2 \
    --deadline $(( start + budget - reserve_hy - reserve_a14b - 10 )) --json "$out/W1-$ti2v.json"
stage "$hy" "$reserve_a14b" "${bench[@]}" --backbone "$hy" --steps 1 --forward-warmups 1 --forward-repeats 2 \
    --deadline $(( start + budget - reserve_a14b - 10 )) --json "$out/W1-$hy.json"
# the A14B draws both experts in bf16 on the GPU (~56 GB, wan22.py): expandable segments against fragmentation
stage "$a14b" 5 env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "${bench[@]}" --backbone "$a14b" --steps 1 \
    --forward-warmups 1 --forward-repeats 1 --deadline $(( start + budget - 15 )) --json "$out/W1-$a14b.json"
cat "$out/families.md"
echo "== total $(( $(date +%s) - start )) s"
