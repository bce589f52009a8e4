"""Run the real CLI with one fault planted (tests of issue 28): `python fault_driver.py FAULT longgen-args...`.

FAULT is one of
  checkpoint:N  the N-th checkpoint write (and every later one) fails with ENOSPC, the earlier ones succeed
  latents       writing latents.safetensors fails with ENOSPC
  video         ffmpeg's pipe breaks while the video is written, the disk full
  record        writing manifest.json fails with ENOSPC
  nan:N         the backbone's N-th prediction (and every later one) is NaN

A test that runs longgen in its own process plants the same fault with `plant(FAULT, monkeypatch.setattr)`.
"""

from __future__ import annotations

import errno
import os
import sys


def _full(name: str):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)


def plant(fault: str, patch=setattr) -> None:
    """Replace what `fault` breaks, each replacement made with `patch(owner, name, value)`."""
    kind, _, arg = fault.partition(":")
    if kind in ("checkpoint", "latents"):
        import longgen.run.checkpoint

        real, calls = longgen.run.checkpoint.write_bytes, []

        def write_bytes(path, data):
            if os.path.basename(str(path)).startswith(f".{kind}."):
                calls.append(path)
                if kind == "latents" or len(calls) >= int(arg):
                    raise _full(str(path))
            return real(path, data)

        patch(longgen.run.checkpoint, "write_bytes", write_bytes)
    elif kind == "video":
        from longgen.writer import Mp4Writer

        import collections
        import shutil

        class FullPipe:  # ffmpeg exits when its output fails, so its stdin breaks
            def send(self, frame):
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

        usage = collections.namedtuple("usage", "total used free")
        patch(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
        real_send = Mp4Writer._send
        patch(Mp4Writer, "_send", staticmethod(lambda writer, frame, out_dir: real_send(FullPipe(), frame, out_dir)))
    elif kind == "record":
        import longgen.run.stages

        real_json = longgen.run.stages.write_json

        def write_json(path, data):
            if os.path.basename(str(path)) == "manifest.json":
                raise _full(str(path))
            return real_json(path, data)

        patch(longgen.run.stages, "write_json", write_json)
    elif kind == "nan":

        from longgen.backbones.diffusers_base import DiffusersBackbone

        real_predict, calls = DiffusersBackbone.predict, []

        def predict(self, x_t, t, prompt_ids, guidance_scale):
            pred = real_predict(self, x_t, t, prompt_ids, guidance_scale)
            calls.append(1)
            if len(calls) >= int(arg):
                pred.x0.fill_(float("nan"))
                pred.eps.fill_(float("nan"))
            return pred

        patch(DiffusersBackbone, "predict", predict)
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    plant(sys.argv[1])
    from longgen.cli import main

    sys.exit(main(sys.argv[2:]))
