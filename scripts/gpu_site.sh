# Sourced by the device scripts (scripts/gpu_lane.sh, compare_gpu.sh, minutes_gpu.sh, bench_families.sh): install the
# wheels of .whl/ (made by scripts/gpu_wheels.sh), the unpacked ffmpeg and longgen itself into $site (default
# /tmp/longgen-lane-site), and point PYTHONPATH, PATH (the `longgen` console script in $site/bin) and
# IMAGEIO_FFMPEG_EXE there. With site_reuse=1 the install (~1 min) is skipped when the site already holds the
# checkout's sources (longgen/, conf/) and every wheel of .whl/ (a warm machine after an earlier part, or after
# scripts/gpu_lane.sh of the same checkout); the lane itself always installs. Needs $repo (the checkout). Returns
# non-zero when .whl/ holds no wheel (one line saying how to make them) or an install fails.
#
#   repo=...; source "$repo/scripts/gpu_site.sh" || exit 1
site=${site:-/tmp/longgen-lane-site}

site_holds_checkout() {
    local w name
    diff -rq -x __pycache__ "$repo/longgen" "$site/longgen" 2> /dev/null | grep -v "^Only in $site/longgen" | grep -q . && return 1
    diff -rq -x __pycache__ "$repo/conf" "$site/longgen/conf" 2> /dev/null | grep -v "^Only in $site" | grep -q . && return 1
    [ -d "$site/longgen" ] && [ -x "$site/ffmpeg" ] || return 1
    for w in "$repo"/.whl/*.whl; do
        name=$(basename "$w" | cut -d- -f1-2)   # NAME-VERSION
        [ -d "$site/$name.dist-info" ] || return 1
    done
}

site_install() {
    if ! compgen -G "$repo/.whl/*.whl" > /dev/null; then   # one line rather than pip's error about a '*.whl' file
        echo "${0##*/}: no wheels in $repo/.whl/: run scripts/gpu_wheels.sh on a machine with pip access first" >&2
        return 2
    fi
    if [ "${site_reuse:-0}" = 1 ] && site_holds_checkout; then
        echo "longgen and the wheels already installed in $site (same sources): no install"
        return 0
    fi
    mkdir -p "$site" &&
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$repo"/.whl/*.whl &&
        { [ -x "$site/ffmpeg" ] || { xz -dc "$repo/.whl/ffmpeg.xz" > "$site/ffmpeg" && chmod +x "$site/ffmpeg"; }; } &&
        python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$site" "$repo"
}

site_install && export PYTHONPATH=$site IMAGEIO_FFMPEG_EXE=$site/ffmpeg PATH=$site/bin:$PATH
