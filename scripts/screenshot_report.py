"""Render a `longgen eval` report.html in a real headless browser and save a PNG screenshot.

Uses Chromium from the system (Debian: `apt-get install chromium`; also finds chromium-browser and google-chrome).
The page is loaded from disk as a file:// URL, so what the screenshot shows is what a user opening the file sees:
embedded plots, and videos (embedded or linked relative to the report).

    python scripts/screenshot_report.py multirun/DATE/TIME/report.html              # → report.png beside it
    python scripts/screenshot_report.py REPORT.html --out shot.png --width 1400 --height 2600

Checks before exiting 0: the browser wrote a non-empty PNG of the requested size, and (with --check) every
<video> element of the page can be played: it is reported with its readyState after load via --dump-dom.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: install it (Debian/Ubuntu: apt-get install chromium) and try again")


def screenshot(browser: str, page: Path, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               "--virtual-time-budget=4000", f"--screenshot={out}", page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        sys.exit(f"the browser did not write {out} (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def video_states(browser: str, page: Path) -> list[str]:
    """readyState of each <video> after load (4 = can play through), via a script that writes them into the DOM."""
    script = ("<script>window.addEventListener('load',()=>setTimeout(()=>{document.title=[...document."
              "querySelectorAll('video')].map(v=>v.readyState+':'+(v.error?v.error.code:0)).join(',')},1500));</script>")
    with tempfile.TemporaryDirectory() as tmp:
        probe = page.parent / f".probe-{Path(tmp).name}.html"
        probe.write_text(page.read_text().replace("</body>", script + "</body>"))
        try:
            proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
                                   f"--user-data-dir={tmp}", "--virtual-time-budget=6000", "--dump-dom",
                                   probe.resolve().as_uri()], capture_output=True, text=True, timeout=120)
        finally:
            probe.unlink()
    title = re.search(r"<title>(.*?)</title>", proc.stdout, re.S)
    return [s for s in (title.group(1).split(",") if title else []) if s]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, help="PNG to write (default: report.png beside the report)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--check", action="store_true", help="also check that every video on the page loads")
    args = parser.parse_args()
    if not args.report.is_file():
        sys.exit(f"{args.report} does not exist")
    out = args.out or args.report.with_suffix(".png")
    browser = find_browser()
    screenshot(browser, args.report, out, args.width, args.height)
    from PIL import Image

    with Image.open(out) as img:
        size = img.size
    print(f"wrote {out} ({size[0]}×{size[1]}) with {browser}")
    if args.check:
        states = video_states(browser, args.report)
        print(f"videos (readyState:error): {', '.join(states) or 'none'}")
        if not states or any(not s.startswith(("3", "4")) or not s.endswith(":0") for s in states):
            sys.exit("some video did not load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
