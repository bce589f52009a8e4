# Sourced by the device scripts (scripts/compare_gpu.sh, scripts/minutes_gpu.sh): install the wheels of .whl/ (made by
# scripts/gpu_wheels.sh), the unpacked ffmpeg and longgen itself into $site (default /tmp/longgen-lane-site, where
# scripts/gpu_lane.sh installs too), as scripts/gpu_lane.sh does, and point PYTHONPATH and IMAGEIO_FFMPEG_EXE there.
# Needs $repo (the checkout). Returns non-zero when an install fails.
#
#   repo=...; source "$repo/scripts/gpu_site.sh" || exit 1
site=${site:-/tmp/longgen-lane-site}
mkdir -p "$site" &&
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$repo"/.whl/*.whl &&
    { [ -x "$site/ffmpeg" ] || { xz -dc "$repo/.whl/ffmpeg.xz" > "$site/ffmpeg" && chmod +x "$site/ffmpeg"; }; } &&
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$site" "$repo" &&
    export PYTHONPATH=$site IMAGEIO_FFMPEG_EXE=$site/ffmpeg PATH=$site/bin:$PATH
