"""Turn the GPU lane's JUnit XML files into the Markdown block recorded in benchmarks/gpu-lane.md."""

from __future__ import annotations

import argparse
import datetime
import xml.etree.ElementTree as ET
from pathlib import Path


def cases(path: Path) -> list[tuple[str, str, float, str]]:
    """(test id, outcome, seconds, first line of the failure) for each test case in one JUnit file."""
    if not path.is_file():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, detail = "pass", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "FAIL", "error": "ERROR", "skipped": "skipped"}[tag]
                detail = (node.get("message") or "").splitlines()[0][:160] if node.get("message") else ""
                break
        rows.append((case.get("name", "?"), outcome, float(case.get("time", 0.0)), detail))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("xml", nargs="+", type=Path)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--minutes", default="?")
    args = parser.parse_args()
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    rows = [row for path in args.xml for row in cases(path)]
    failed = sum(r[1] in ("FAIL", "ERROR") for r in rows)
    passed = sum(r[1] == "pass" for r in rows)
    print(f"### {datetime.date.today()} · {gpu} × {torch.cuda.device_count()} · commit {args.commit} · "
          f"{passed} passed, {failed} failed · {args.minutes} min wall (install included)\n")
    print("| case | result | s | note |\n|---|---|---|---|")
    for name, outcome, seconds, detail in rows:
        print(f"| `{name}` | {outcome} | {seconds:.0f} | {detail.replace('|', '/')} |")
    print()


if __name__ == "__main__":
    main()
