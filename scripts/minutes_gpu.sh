#!/usr/bin/env bash
# Minutes in bounded memory (issue 27) through the installed CLI, one device command per part, each inside 9.5
# minutes: install as scripts/gpu_lane.sh does (scripts/gpu_site.sh), run `longgen` from /tmp with
# scripts/memory_trace.py sampling the process tree's RSS and nvidia-smi memory.used every 2 s, stop it in time
# (SIGINT at the part's deadline, SIGKILL of its process group 25 s later), then put a Markdown summary
# (scripts/minutes_report.py), the manifests, logs and traces under $OUT (no videos, latents or checkpoints).
#
#   bash scripts/minutes_gpu.sh 1a     # Wan 2.1 1.3B, one minute: 961 frames (241 latent), 4 steps        ~6 min
#   bash scripts/minutes_gpu.sh 1b     # CogVideoX-2B, 481 frames (121 latent, one minute at 8 fps), 8 steps ~6 min
#   bash scripts/minutes_gpu.sh 2a     # Wan ten-minute plan, 9,601 frames (2,401 latent, 398 windows): its
#                                      # first step, the checkpoint, the start of its decode   9.5 min on 1 H200
#   bash scripts/minutes_gpu.sh 2b     # the full-length streamed decode of the ten-minute latents   ~8 min
#   bash scripts/minutes_gpu.sh --dry 1a   # the same steps on the CPU with the tiny backbones (a few frames)
#
# Every job: gen-l-video (the issue's bench row, scripts/bench.py --workload scaling), random weights, gpus=all,
# save_latents=false, eager (backbone.compile=false: no compile time in a 9.5-minute command), attention auto
# (cuDNN SDPA). Steps are reduced so sampling fits; memory does not depend on the step count, and the report
# projects time to 50 steps (scripts/minutes_report.py states the rule).
# 2a plans the ten-minute video with sampler.num_steps=1: the plan's full length and all its 398 windows, one step.
# The step ends in checkpoint.safetensors (the sampled state, done 1 of 1); the run goes on into its decode and is
# stopped by SIGINT 90 s later (the checkpoint stays). 2b then decodes those latents with `longgen decode RUN_DIR`
# when the machine still holds 2a's run directory (MINUTES_RUNS, inside the checkout: kept while the machine is
# warm); otherwise it decodes seeded N(0, 1) latents of the same shape from a latents file (decode memory and time
# depend on the shape only); the summary says which. 2a's step on one H200 measured 455 s with fa3 (session 12):
# run it with MINUTES_EXTRA="backbone.attention=fa3" MINUTES_DEADLINE=560 after a command that installed the same
# checkout (the install is then skipped), or on 2 GPUs (kind nvidia-h200-x2), where gpus=all halves it.
#
# Environment: OUT (default /tmp/minutes-out), MINUTES_RUNS (run directories, default $repo/.minutes),
# MINUTES_INSTALL=0 (use the Python environment as it is; a part run after another on the same warm machine skips
# the install by itself), MINUTES_EXTRA (more overrides for every longgen
# command, e.g. "backbone.attention=fa3"), MINUTES_STEPS (override the part's sampler.num_steps), MINUTES_DEADLINE
# (seconds from the start to the SIGINT, default 530; at most 560 keeps the SIGKILL and the report in 600 s).
# On one H100, 2a's step is ~480 s with fa3 (1a's 46.1 s x 398/38 windows): MINUTES_EXTRA="backbone.attention=fa3"
# MINUTES_DEADLINE=560 bash scripts/minutes_gpu.sh 2a, with timeout_s 600.
set -uo pipefail
dry=0
[ "${1:-}" = --dry ] && { dry=1; shift; }
part=${1:-}
case $part in
    1a | 1b | 2a | 2b) ;;
    *) echo "minutes_gpu.sh: give the part, 1a, 1b, 2a or 2b (got '$part')" >&2; exit 2 ;;
esac
started=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/minutes-out}
runs=${MINUTES_RUNS:-$repo/.minutes}
mkdir -p "$out" "$runs"
site=${MINUTES_SITE:-/tmp/longgen-lane-site}   # scripts/gpu_site.sh installs there
if [ "$dry" = 0 ] && [ "${MINUTES_INSTALL:-1}" = 1 ]; then
    site_reuse=1 source "$repo/scripts/gpu_site.sh" || exit 1   # skipped when the site holds this checkout already
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
cd /tmp || exit 1   # import the installed package, never the checkout
read -r -a extra <<< "${MINUTES_EXTRA:-}"

# the part's settings: GPU (full size) or --dry (tiny backbones on the CPU, one process)
if [ "$dry" = 0 ]; then
    wan=(backbone=wan2.1-t2v-1.3b backbone.random_weights=true backbone.compile=false)
    cog=(backbone=cogvideox-2b backbone.random_weights=true backbone.compile=false)
    gpus=all minute_wan=241 minute_cog=121 ten=2401 ten_shape="2401 16 60 104"
    steps_wan=4 steps_cog=8 deadline=${MINUTES_DEADLINE:-530} watch=90
else
    wan=(backbone=tiny-wan backbone.height=16 backbone.width=16)
    cog=(backbone=tiny backbone.height=16 backbone.width=16)
    gpus=1 minute_wan=31 minute_cog=25 ten=2401 ten_shape="2401 4 2 2"   # the ten-minute geometry, 16x16 pixels
    steps_wan=2 steps_cog=2 deadline=240 watch=3
fi
common=(sampler=gen-l-video save_latents=false seed=0 "gpus=$gpus" progress_seconds=5
        "prompt_file=$repo/prompts/storytelling_paper_boat.txt")

# job NAME WATCH COMMAND...: run COMMAND (its own process group) with the memory trace; SIGINT at the deadline,
# or WATCH seconds after $runs/NAME/checkpoint.safetensors appears (WATCH > 0); SIGKILL of the group 25 s later.
# Log: $out/NAME.log, trace: $out/NAME.trace.csv. Returns the command's exit status.
job() {
    local name=$1 watch=$2
    shift 2
    echo "== $name: $*"
    setsid "$@" > "$out/$name.log" 2>&1 &
    local pid=$! stop=$((started + deadline)) signalled=0
    python3 "$repo/scripts/memory_trace.py" --pid "$pid" --out "$out/$name.trace.csv" --log "$out/$name.log" &
    local tracer=$!
    while kill -0 "$pid" 2> /dev/null; do
        if [ "$watch" -gt 0 ] && [ -e "$runs/$name/checkpoint.safetensors" ] && [ "$stop" -gt $(($(date +%s) + watch)) ]; then
            stop=$(($(date +%s) + watch))
            echo "   checkpoint written at $(($(date +%s) - started)) s; stopping ${watch} s into the decode"
        fi
        if [ "$signalled" = 0 ] && [ "$(date +%s)" -ge "$stop" ]; then
            echo "   SIGINT at $(($(date +%s) - started)) s"
            kill -INT "$pid"
            signalled=1
        elif [ "$signalled" = 1 ] && [ "$(date +%s)" -ge $((stop + 25)) ]; then
            echo "   SIGKILL at $(($(date +%s) - started)) s"
            kill -KILL -- "-$pid"
            signalled=2
        fi
        sleep 1
    done
    wait "$pid"
    local status=$?
    wait "$tracer"
    tail -n 4 "$out/$name.log"
    echo "   exit $status after $(($(date +%s) - started)) s"
    return $status
}

# keep NAME: the run directory's small records into $out/NAME/
keep() {
    mkdir -p "$out/$1"
    (cd "$runs/$1" 2> /dev/null && cp -r manifest.json ./*.log .hydra story.json "$out/$1/" 2> /dev/null)
}

report() {
    python3 "$repo/scripts/minutes_report.py" "$@" | tee "$out/summary-$part.md"
}

case $part in
    1a)
        rm -rf "$runs/wan-minute"
        job wan-minute 0 longgen generate "${wan[@]}" "${common[@]}" "latent_frames=$minute_wan" \
            "sampler.num_steps=${MINUTES_STEPS:-$steps_wan}" "hydra.run.dir=$runs/wan-minute" "${extra[@]}"
        status=$?
        keep wan-minute
        report --fps 16 --job "Wan 2.1 1.3B, one minute" "$runs/wan-minute" "$out/wan-minute.trace.csv" ;;
    1b)
        rm -rf "$runs/cog-minute"
        job cog-minute 0 longgen generate "${cog[@]}" "${common[@]}" "latent_frames=$minute_cog" \
            "sampler.num_steps=${MINUTES_STEPS:-$steps_cog}" "hydra.run.dir=$runs/cog-minute" "${extra[@]}"
        status=$?
        keep cog-minute
        report --fps 8 --job "CogVideoX-2B, 481 frames" "$runs/cog-minute" "$out/cog-minute.trace.csv" ;;
    2a)
        rm -rf "$runs/ten"
        job ten "$watch" longgen generate "${wan[@]}" "${common[@]}" "latent_frames=$ten" checkpoint_every=1 \
            "sampler.num_steps=${MINUTES_STEPS:-1}" "hydra.run.dir=$runs/ten" "${extra[@]}"
        status=$?
        [ -e "$runs/ten/checkpoint.safetensors" ] && status=0   # stopped on purpose after its step: the checkpoint is the result
        keep ten
        report --fps 16 --job "Wan 2.1 1.3B, ten-minute plan: first step" "$runs/ten" "$out/ten.trace.csv" ;;
    2b)
        rm -rf "$runs/ten-decode"
        if python3 -c "
import sys
from pathlib import Path
from longgen.run.checkpoint import load_checkpoint
c = load_checkpoint(Path(sys.argv[1]))
sys.exit(c.state.done != c.total)" "$runs/ten/checkpoint.safetensors" 2> /dev/null; then
            source="part 2a's sampled latents, longgen decode RUN_DIR"
            echo "decoding the ten-minute plan's sampled latents: $runs/ten (part 2a's run)"
            job ten-decode 0 longgen decode "$runs/ten" writer.filename=video-full.mp4 overwrite=true  # the run's config
            status=$?
            mkdir -p "$runs/ten-decode" && mv "$runs/ten/video-full.mp4" "$runs/ten-decode/" 2> /dev/null
        else
            source="seeded N(0, 1) latents [$ten_shape], longgen decode LATENTS.safetensors"
            echo "no finished ten-minute checkpoint here (part 2a ran on another machine): decoding N(0, 1) latents [$ten_shape]"
            python3 -c "
import sys, torch
from safetensors.torch import save_file
shape = [int(v) for v in sys.argv[2:]]
save_file({'latents': torch.randn(shape, generator=torch.Generator().manual_seed(0))}, sys.argv[1])  # [F, C, H, W]
" "$runs/ten-latents.safetensors" $ten_shape || exit 1
            job ten-decode 0 longgen decode "$runs/ten-latents.safetensors" "${wan[@]}" "out=$runs/ten-decode" \
                progress_seconds=5 "${extra[@]}"
            status=$?
        fi
        report --fps 16 --job "Wan 2.1 1.3B, ten-minute streamed decode ($source)" "$runs/ten-decode" "$out/ten-decode.trace.csv" ;;
esac
ls -l "$out"
exit "$status"
