"""docs/ARCHITECTURE.md must not go stale: every `path` it names exists, and
every `identifier` it names (snake_case, as in `model_forward`) is a
function or macro defined in the sources or a module (a NAME.c/NAME.h).
Usage: check_architecture.py docs/ARCHITECTURE.md"""
import glob
import os
import re
import sys

top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
doc = open(sys.argv[1], encoding="utf-8").read()
sources = glob.glob(os.path.join(top, "common", "*.[ch]")) + \
    glob.glob(os.path.join(top, "worker", "*.[ch]")) + \
    glob.glob(os.path.join(top, "server", "*", "*.[ch]"))
text = "\n".join(open(f, encoding="utf-8").read() for f in sources)
modules = {os.path.splitext(os.path.basename(f))[0] for f in sources}
problems = []
names = 0
for tok in sorted(set(re.findall(r"`([^`\s]+)`", doc))):
    if "/" in tok or tok.endswith((".c", ".h", ".md", ".a")):
        path = tok.rstrip("/")
        if not tok.endswith(".a") and not os.path.exists(os.path.join(top, path)):
            problems.append("names `%s`, which does not exist" % tok)
        continue
    if re.fullmatch(r"[a-z][a-z0-9]*(_+[a-z0-9]+)+", tok):
        names += 1
        defined = re.search(r"^[A-Za-z_].*\b%s\(" % re.escape(tok), text, re.M) or \
            re.search(r"#define %s\b" % re.escape(tok), text)
        if not defined and tok not in modules:
            problems.append("names `%s`, which is no function or module of the sources" % tok)
for p in problems:
    print("%s: %s" % (sys.argv[1], p))
if problems:
    sys.exit(1)
print("check_architecture.py: %d functions and modules of %s exist" % (names, sys.argv[1]))
