#!/usr/bin/env bash
# Install longgen and the wheels it lacks on an offline GPU machine (wheels carried in .whl*/ directories, see benchmarks/README.md).
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $(ls .whl*/*.whl)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site .
export PYTHONPATH=/tmp/site
(cd /tmp && python3 -c "import torch, diffusers, hydra, longgen.conf; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())")
