"""Summarise a py-spy ``--format raw`` profile: self time and inclusive time per function.

python -m bench.profile_top FILE [--top 40] [--filter sutazai_agent]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--filter", default="")
    args = p.parse_args()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    with open(args.file, encoding="utf-8") as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            count = int(count_text)
            frames = [short(x) for x in stack.split(";") if x]
            samples += count
            if frames:
                own[frames[-1]] += count
            for frame in set(frames):
                total[frame] += count
    print(f"{samples} samples")
    print("--- self")
    for name, n in own.most_common(args.top):
        print(f"{100 * n / samples:5.1f}%  {name}")
    print("--- inclusive")
    shown = 0
    for name, n in total.most_common():
        if args.filter in name:
            print(f"{100 * n / samples:5.1f}%  {name}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
