"""Lists the longest functions of the production C sources (common/, worker/,
server/): name, file, line and length in lines, longest first. With
--max N, exits 1 when one is longer than N lines.

Usage: long_functions.py [--max N] [--top K] DIR...
"""
import re
import sys


def functions(path):
    lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^[A-Za-z_].*\(", line) and not line.startswith("#") and not line.rstrip().endswith(";"):
            if "{" in line and line.rstrip().endswith("}"):  # a one-line function
                i += 1
                continue
            j = i
            while j < len(lines) and not lines[j].startswith("{") and not lines[j].rstrip().endswith(";"):
                j += 1
            if j < len(lines) and lines[j].startswith("{"):
                k = j + 1
                while k < len(lines) and not lines[k].startswith("}"):
                    k += 1
                name = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", line).group(1)
                yield name, i + 1, k - i + 1
                i = k
        i += 1


args = sys.argv[1:]
limit, top = None, 3
while args and args[0].startswith("--"):
    if args[0] == "--max":
        limit = int(args[1])
    elif args[0] == "--top":
        top = int(args[1])
    args = args[2:]
import glob
found = []
for d in args:
    for path in sorted(glob.glob(d + "/**/*.c", recursive=True)):
        for name, line, n in functions(path):
            found.append((n, name, path, line))
found.sort(reverse=True)
for n, name, path, line in found[:top]:
    print("%4d lines  %s  (%s:%d)" % (n, name, path, line))
if limit is not None:
    over = [f for f in found if f[0] > limit]
    for n, name, path, line in over:
        print("too long: %s (%s:%d) has %d lines, more than %d" % (name, path, line, n, limit))
    sys.exit(1 if over else 0)
