#!/usr/bin/env python3
"""Where a running process's resident memory is: /proc/PID/smaps summed per mapping kind
(the executable's code, its read-only data, its writable data, each shared library, the
heap, thread stacks and other anonymous memory), in KiB.

For the executable's code it also reads /proc/PID/pagemap (root) and counts the 64 KiB
windows that hold at least one resident page: the kernel's fault-around maps up to a whole
such window (fault_around_bytes, 64 KiB by default) on one page fault, so the window count
times 4 KiB is the least the code could be resident without fault-around, and the
resident pages are the most.

With --referenced SECONDS it clears the pages' referenced bits (/proc/PID/clear_refs, 1),
waits, and adds the column "Referenced": what the process touched in that time, its
steady working set.

Usage: scripts/rss-breakdown.py PID [--referenced SECONDS]
"""

import os
import re
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
WINDOW = 64 * 1024


def usage(msg):
    print(f"error: {msg}\nusage: rss-breakdown.py PID [--referenced SECONDS]", file=sys.stderr)
    sys.exit(2)


def read_smaps(pid):
    """Yields (start, end, perms, path, fields) for each mapping of /proc/PID/smaps."""
    head = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = head.match(line)
            if m:
                if cur:
                    yield cur
                cur = (int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4), {})
                continue
            key, _, rest = line.partition(":")
            parts = rest.split()
            if cur and len(parts) == 2 and parts[1] == "kB":
                cur[4][key] = int(parts[0])
    if cur:
        yield cur


def resident_windows(pid, start, end):
    """(resident pages, 64 KiB windows with a resident page) in [start, end), from pagemap."""
    pages = 0
    windows = set()
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        data = f.read((end - start) // PAGE * 8)
    for i in range(len(data) // 8):
        entry = int.from_bytes(data[i * 8 : i * 8 + 8], "little")
        if entry >> 63 & 1:
            pages += 1
            windows.add((start + i * PAGE) // WINDOW)
    return pages, len(windows)


def main():
    args = sys.argv[1:]
    if not args or not args[0].isdigit():
        usage("PID must be a process id")
    pid = int(args[0])
    wait = None
    if len(args) == 3 and args[1] == "--referenced" and args[2].isdigit():
        wait = int(args[2])
    elif len(args) != 1:
        usage("unexpected arguments " + " ".join(args[1:]))
    exe = os.readlink(f"/proc/{pid}/exe")
    if wait is not None:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("1")
        time.sleep(wait)
    rows = {}
    text_pages = text_windows = 0
    for start, end, perms, path, fields in read_smaps(pid):
        if path == exe:
            kind = {"r-xp": "exe code", "r--p": "exe rodata", "rw-p": "exe data"}.get(perms, "exe other")
            if perms == "r-xp":
                p, w = resident_windows(pid, start, end)
                text_pages += p
                text_windows += w
        elif path.startswith("/"):
            kind = os.path.basename(path)
        elif path == "[heap]":
            kind = "heap"
        elif path.startswith("[stack"):
            kind = "main stack"
        elif path in ("", "[anon]") or path.startswith("[anon:"):
            kind = "anonymous (thread stacks, mmap'd allocations)"
        else:
            kind = path
        r = rows.setdefault(kind, [0, 0, 0])
        r[0] += fields.get("Rss", 0)
        r[1] += fields.get("Referenced", 0)
        r[2] += fields.get("Size", 0)
    total = sum(r[0] for r in rows.values())
    cols = "Rss KiB  Referenced KiB" if wait is not None else "Rss KiB"
    print(f"{'mapping':<48} {cols}   (size KiB)")
    for kind, (rss, ref, size) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        if rss == 0:
            continue
        refcol = f"  {ref:>14}" if wait is not None else ""
        print(f"{kind:<48} {rss:>7}{refcol}   ({size})")
    print(f"{'total (VmRSS)':<48} {total:>7}")
    print(
        f"exe code: {text_pages} resident pages ({text_pages * PAGE // 1024} KiB) in "
        f"{text_windows} 64 KiB fault-around windows (at least {text_windows * PAGE // 1024} KiB "
        f"without fault-around)"
    )


if __name__ == "__main__":
    main()
