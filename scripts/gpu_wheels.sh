#!/usr/bin/env bash
# Prepare .whl/ on a machine with pip access: the wheels the offline GPU image lacks (Python 3.12, x86-64), for
# scripts/gpu_lane.sh and scripts/device_setup.sh. The GPU image already has torch, transformers, accelerate,
# safetensors, opencv, matplotlib, rich, imageio, filelock and a peft (the tested peft, 0.8 MB, travels here all the
# same, pinned, for backbone.lora; submitit and cloudpickle for the SLURM lane case). What travels to the GPU machine is limited to 64 MiB, so imageio-ffmpeg's 80 MB
# ffmpeg binary travels on its own, xz-compressed (about 21 MB), and its wheel without it (IMAGEIO_FFMPEG_EXE
# points at the unpacked binary there).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
mkdir -p "$dest"
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
get() { python3 -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d "$dest" "$@"; }
get diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0 json5==0.17.3 \
    openai==3.60.0 distro==1.9.0 jiter==0.19.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 sniffio==1.3.1 scenedetect==0.7.2 platformdirs==4.14.9 fa3-fwd==0.0.3 \
    peft==0.21.2 submitit==1.5.4 cloudpickle==3.1.3
# antlr4 4.9.3 (hydra's parser runtime) is published as a source archive only: build its pure-Python wheel here
[ -e "$dest"/antlr4_python3_runtime-4.9.3-py3-none-any.whl ] ||
    python3 -m pip wheel -q --no-deps -w "$dest" antlr4-python3-runtime==4.9.3
# imageio-ffmpeg: the package without its binary, and the binary compressed
if [ ! -e "$dest"/ffmpeg.xz ]; then
    tmp=$(mktemp -d)
    get imageio-ffmpeg==0.6.0 -d "$tmp"
    whl=$(ls "$tmp"/imageio_ffmpeg-*.whl)
    bin=$(unzip -Z1 "$whl" | grep 'binaries/ffmpeg-linux')
    unzip -p "$whl" "$bin" | xz -9 -T2 > "$dest"/ffmpeg.xz
    zip -q -d "$whl" "$bin"
    mv "$whl" "$dest"/
    rm -rf "$tmp"
fi
du -sh "$dest"
