#!/usr/bin/env python3
"""Outline a text file, or print a range of its lines with their numbers.

Usage: outline.py FILE             size, line count, headings and definitions by line
       outline.py FILE FIRST COUNT lines FIRST..FIRST+COUNT-1 (COUNT at most 400)
FILE is relative to $CLAW_WORKSPACE, or absolute. Read-only.
"""

import os
import re
import sys

MAX_RANGE = 400
MAX_ENTRIES = 200
HEADING = re.compile(
    r"^(#{1,6}\s+\S.*"  # Markdown heading
    r"|\s*(async\s+def|def|class)\s+\w+.*"  # Python
    r"|\s*(export\s+)?(async\s+)?function\s+\w+.*"  # JavaScript
    r"|func\s+.*"  # Go
    r"|\[[^\]]+\]\s*"  # INI / TOML section
    r"|.*\b(ERROR|FATAL|Traceback)\b.*)"  # log trouble
)


def main() -> int:
    if len(sys.argv) not in (2, 4):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path = os.path.join(os.environ.get("CLAW_WORKSPACE", "."), sys.argv[1])
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        print(f"cannot read {sys.argv[1]}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if len(sys.argv) == 4:
        try:
            first, count = int(sys.argv[2]), min(int(sys.argv[3]), MAX_RANGE)
        except ValueError:
            print("FIRST and COUNT must be numbers", file=sys.stderr)
            return 2
        first = max(first, 1)
        for number in range(first, min(first + count, len(lines) + 1)):
            print(f"{number:>6}  {lines[number - 1]}")
        if first + count <= len(lines):
            print(f"... {len(lines) - first - count + 1} more lines after line {first + count - 1}")
        return 0
    print(f"{sys.argv[1]}: {os.path.getsize(path)} bytes, {len(lines)} lines")
    shown = 0
    for number, line in enumerate(lines, 1):
        if HEADING.match(line):
            shown += 1
            if shown > MAX_ENTRIES:
                print(f"... more entries after line {number}")
                break
            print(f"{number:>6}  {line.strip()[:160]}")
    if not shown:
        print("(no headings or definitions found: read it in ranges)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
