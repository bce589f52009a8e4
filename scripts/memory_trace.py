"""Memory of a running longgen command over time, seen from outside the process (issue 27, scripts/minutes_gpu.sh).

    python3 scripts/memory_trace.py --pid PID --out trace.csv [--log run.log] [--interval 2]

Every `--interval` seconds until PID exits, one CSV row:
- `t`: seconds since the trace started;
- `rss_bytes`: the resident memory of PID and all its descendants together (the gpus=N worker processes, the ffmpeg
  that encodes the mp4), summed from /proc/N/status VmRSS; `rss_main_bytes` and `hwm_main_bytes`: PID's own VmRSS
  and VmHWM (its peak so far, what the manifest's `peak_host_memory_bytes` reports at the end);
- `gpu_mib`: `nvidia-smi --query-gpu=memory.used` of every GPU, `;`-separated (empty without nvidia-smi). That is the
  whole device's use: the CUDA context and the caching allocator's reserve included, so it is above
  torch.cuda.max_memory_allocated; its growth over time is what the trace is for;
- `phase`, `done`, `total`, `elapsed`: the last progress line of `--log` (e.g. `decode: 1201/9601, 0:40 elapsed`
  -> decode, 1201, 9601, 40), so memory can be put against the frames written.

Reads only /proc and nvidia-smi; the traced process is not touched.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import time
from pathlib import Path

PROGRESS = re.compile(r"(denoise|decode)[^:\n]*: (\d+)/(\d+)[^,\n]*, ([\d:]+) elapsed")


def status_kib(pid: int, field: str) -> int:
    """A `/proc/PID/status` field in KiB (VmRSS, VmHWM); 0 when the process is gone or the field is absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def descendants(root: int) -> list[int]:
    """root and every process below it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def gpu_used_mib() -> list[int]:
    """memory.used of every GPU in MiB; [] where nvidia-smi is missing or fails."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(v) for v in out.split() if v.strip().isdigit()]


def last_progress(log: Path | None) -> tuple[str, str, str, str]:
    """(phase, done, total, seconds elapsed in the phase) of the last progress line in the log's last 8 KB; empty
    strings if none."""
    if log is None:
        return "", "", "", ""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return "", "", "", ""
    hits = PROGRESS.findall(tail)
    if not hits:
        return "", "", "", ""
    phase, done, total, clock = hits[-1]
    seconds = 0
    for part in clock.split(":"):  # [h:]mm:ss
        seconds = 60 * seconds + int(part)
    return phase, done, total, str(seconds)


def trace(pid: int, out: Path, log: Path | None, interval: float) -> None:
    started = time.monotonic()
    with out.open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["t", "rss_bytes", "rss_main_bytes", "hwm_main_bytes", "gpu_mib", "phase", "done", "total", "elapsed"])
        while Path(f"/proc/{pid}").exists():
            tree = descendants(pid)
            rss = sum(status_kib(p, "VmRSS") for p in tree) * 1024
            main, hwm = status_kib(pid, "VmRSS") * 1024, status_kib(pid, "VmHWM") * 1024
            if main == 0:  # exited (or a zombie) between the check and the reads
                break
            gpus = ";".join(str(v) for v in gpu_used_mib())
            rows.writerow([round(time.monotonic() - started, 2), rss, main, hwm, gpus, *last_progress(log)])
            f.flush()
            time.sleep(interval)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, required=True, help="the process to trace (its descendants are counted too)")
    ap.add_argument("--out", type=Path, required=True, help="CSV file to write")
    ap.add_argument("--log", type=Path, help="the command's log, for its last progress line")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    args = ap.parse_args()
    trace(args.pid, args.out, args.log, args.interval)


if __name__ == "__main__":
    main()
