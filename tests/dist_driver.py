"""Run several longgen commands in one process (one process group), as `python -m longgen.cli` would run each.

    python tests/dist_driver.py '[["generate", "-m", ...], ["resume", DIR]]'          (alone)
    torchrun --standalone --nproc-per-node=3 tests/dist_driver.py '[...]'            (3 processes)

Ranks > 0 follow every job of every command inside the first `cli.main` call (parallel.units.Group.follow), so the
commands share one start-up. LONGGEN_TEST_FAULT="RANK:MODE:WEIGHTS_SEED:CALL" makes rank RANK fail at its
CALL-th transformer call of the job whose backbone.weights_seed is WEIGHTS_SEED: MODE raise (an exception) or kill
(SIGKILL, as the kernel's out-of-memory killer would). The exit status is the first failing command's.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from longgen import cli
from longgen.backbones.cogvideox import CogVideoXBackbone


def install_fault(spec: str) -> None:
    rank, mode, seed, at = spec.split(":")
    if int(os.environ.get("RANK", "0")) != int(rank):
        return
    plain = CogVideoXBackbone._transformer
    calls = {}

    def failing(self, x, emb, t):
        if self.weights_seed == int(seed):
            calls[id(self)] = calls.get(id(self), 0) + 1
            if calls[id(self)] == int(at):
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("injected failure")
        return plain(self, x, emb, t)

    CogVideoXBackbone._transformer = failing


def main() -> int:
    if os.environ.get("LONGGEN_TEST_FAULT"):
        install_fault(os.environ["LONGGEN_TEST_FAULT"])
    code = 0
    for command in json.loads(sys.argv[1]):
        try:
            rc = cli.main(command)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        code = code or (rc or 0)
        if int(os.environ.get("RANK", "0")) != 0:
            break  # a follower ran every command's jobs in the first call
    return code


if __name__ == "__main__":
    sys.exit(main())
