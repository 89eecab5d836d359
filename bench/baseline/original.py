#!/usr/bin/env python3
"""The approach logpipe replaces, as a batch job over one file.

Where it comes from: the project brief describes the home-grown scripts as
"tail one log, parse it with a regex that silently drops IPv6 clients and
logged-in users, count by wall clock, and post to InfluxDB". The scripts
themselves are not in this repository, so this is a reconstruction that
keeps each of those traits:

- one `re.search` per line with the classic hand-written combined-log
  pattern: an IPv4-only client, a literal `- -` (so any logged-in user
  fails), a request of exactly three words (so `"-"` and garbage requests
  fail) and a numeric size (so `-` sizes fail). Lines that fail are skipped
  without a word — that is the loss the brief talks about;
- `datetime.strptime` on the time field;
- count, traffic and errors (status >= 400) per 10 s window.

Two things differ, both in its favour: windows come from the line's own time
(counting by wall clock cannot be compared with anything in a batch run), and
nothing is posted to InfluxDB — only parsing and counting are timed.

Usage: original.py ACCESS_LOG > windows.json
Prints {"lines": N, "matched": M, "windows": {"<start ms>": [count, traffic, errors]}}.
"""

import json
import re
import sys
from datetime import datetime

LINE = re.compile(
    r'(\d+\.\d+\.\d+\.\d+) - - \[(.*?)\] "(\w+) (\S+) (\S+)" (\d+) (\d+)'
)
WINDOW_MS = 10_000


def main(path):
    windows = {}
    lines = matched = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            lines += 1
            m = LINE.search(line)
            if not m:
                continue
            matched += 1
            t = datetime.strptime(m.group(2), "%d/%b/%Y:%H:%M:%S %z")
            start = int(t.timestamp() * 1000) // WINDOW_MS * WINDOW_MS
            status = int(m.group(6))
            w = windows.setdefault(start, [0, 0, 0])
            w[0] += 1
            w[1] += int(m.group(7))
            if status >= 400:
                w[2] += 1
    json.dump(
        {
            "lines": lines,
            "matched": matched,
            "windows": {str(k): v for k, v in sorted(windows.items())},
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main(sys.argv[1])
