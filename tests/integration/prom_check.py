#!/usr/bin/env python3
"""Strict validator of the Prometheus text exposition format, version 0.0.4.

Checks a /metrics page as the coordinator serves it (see server/coordinator/moe_prom.h):

    prom_check.py [FILE|-] [--require FAMILY]... [--warn-units] [--moe]
    prom_check.py --self-test

Exit 0 with one summary line ("prom_check: ok: F families, S samples"), or
exit 1 with every violation as "NAME:LINE: message" and a count; 2 on a
usage error. Standard library only.

What it checks:
  * syntax: every line is blank, "# HELP name text", "# TYPE name type",
    another "#" comment, or a sample  name{label="value",...} value [ts];
    names [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* not
    starting with "__" and not repeated; escapes \\ \" \n in label values and
    \\ \n in HELP; values are decimal floats, +Inf, -Inf or NaN; timestamps
    integers; UTF-8; "\n" line ends, including after the last line;
  * families: at most one HELP and one TYPE each, both before the first
    sample; a family's lines (HELP, TYPE, samples) contiguous; no series
    (name + label set) twice; no family name that collides with a series
    of a histogram or summary;
  * types: a counter's name ends in _total, its samples are that name (or
    <base>_created) and not negative; gauges and untyped take no suffix; a
    histogram has only _bucket (with le), _sum and _count, per label set
    buckets in increasing le order, non-decreasing, ending at le="+Inf"
    whose value equals _count, and a _sum; a summary has quantile samples
    (0 <= q <= 1) and _sum and _count without quantile;
  * warnings only (stderr, exit status unchanged): a family without HELP,
    a colon in a name;
  * names: base units (a name with s, ms, milliseconds, h, kb, mb, minutes,
    ... as a word fails; --warn-units makes that a warning), and _total only on
    counters.

With --moe, also this project's conventions (README, "The coordinator and
monitoring"): every family has HELP and TYPE (no untyped); names start with
moe_ or process_; a series labelled by expert has no server label (the
placement is moe_expert_placement_info's alone), and every *_info family is a
gauge whose samples are 1.

Deliberately stricter than Prometheus' own parser, because our writer never
produces these: whitespace at the start or end of a line or inside braces,
"#HELP" without a space, and the Inf/NaN spellings other than +Inf, -Inf, NaN.
"""

import re
import sys

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
TS_RE = re.compile(r"-?[0-9]+\Z")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")

# Words in a metric name that mean a unit other than the base one.
NON_BASE_UNITS = {
    "seconds": ("s", "sec", "secs", "m", "h", "d", "ms", "msec", "msecs", "millis", "millisecond", "milliseconds", "us", "usec",
                "usecs", "micros", "microsecond", "microseconds", "ns", "nsec", "nanos",
                "nanosecond", "nanoseconds", "minute", "minutes", "hour", "hours", "day", "days"),
    "bytes": ("b", "kb", "pb", "kib", "mb", "mib", "gb", "gib", "tb", "tib", "kilobytes", "kibibytes",
              "megabytes", "mebibytes", "gigabytes", "gibibytes", "terabytes"),
    "ratio (0..1)": ("percent", "percentage", "pct"),
}
UNIT_WORDS = {w: base for base, words in NON_BASE_UNITS.items() for w in words}


def parse_float(text):
    """The value of a sample or an le/quantile label, or None if malformed."""
    if text == "+Inf":
        return float("inf")
    if text == "-Inf":
        return float("-inf")
    if text == "NaN":
        return float("nan")
    if FLOAT_RE.match(text):
        return float(text)
    return None


def fmt_series(name, labels):
    inner = ",".join('%s="%s"' % (k, v) for k, v in labels)
    return "%s{%s}" % (name, inner) if labels else name


class Family:
    def __init__(self, name, line):
        self.name = name
        self.type = None       # None: untyped without a TYPE line
        self.type_line = None
        self.help_line = None
        self.first_line = line
        self.samples = []      # (line, sample name, {labels}, value)

    @property
    def kind(self):
        return self.type or "untyped"


class Checker:
    def __init__(self, source, warn_units=False):
        self.source = source
        self.warn_units = warn_units
        self.errors = []       # (line, message)
        self.warnings = []
        self.families = {}     # name -> Family, in order of appearance
        self.current = None    # the family whose block we are in
        self.closed = set()    # families whose block has ended
        self.series = {}       # (name, frozenset(labels)) -> line
        self.n_samples = 0

    def error(self, line, msg):
        self.errors.append((line, msg))

    # -- families and their blocks ---------------------------------------

    def enter(self, name, line):
        """Makes `name` the current family, checking contiguity."""
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = Family(name, line)
        if self.current is not fam:
            if name in self.closed:
                self.error(line, "lines of family %s are not contiguous: its block started at "
                                 "line %d and other families came in between" %
                           (name, fam.first_line))
            if self.current is not None:
                self.closed.add(self.current.name)
            self.current = fam
        return fam

    def family_of(self, name):
        """The family a sample name belongs to (declared families only, as
        TYPE must come before samples)."""
        for suffix, kinds in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                              ("_count", ("histogram", "summary"))):
            if name.endswith(suffix):
                base = self.families.get(name[: -len(suffix)])
                if base is not None and base.type in kinds:
                    return base.name, suffix
        if name.endswith("_created"):
            base = self.families.get(name[: -len("_created")] + "_total")
            if base is not None and base.type == "counter":
                return base.name, "_created"
        return name, ""

    # -- lines -----------------------------------------------------------

    def check(self, data):
        if b"\r" in data:
            for i, raw in enumerate(data.split(b"\n"), 1):
                if b"\r" in raw:
                    self.error(i, "carriage return: lines must end in \\n alone")
        lines = data.split(b"\n")
        if data and not data.endswith(b"\n"):
            self.error(len(lines), "the last line does not end in a newline")
        if data.endswith(b"\n"):
            lines.pop()
        for i, raw in enumerate(lines, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self.error(i, "not valid UTF-8 (byte %d)" % e.start)
                continue
            text = text.replace("\r", "")
            if text == "":
                continue
            # Trailing blanks are fine on comments (a HELP text may end in
            # one), nowhere else; leading blanks nowhere.
            if text != text.lstrip(" \t") or (
                    not text.startswith("#") and text != text.rstrip(" \t")):
                self.error(i, "whitespace at the start or end of the line")
                text = text.strip(" \t")
                if text == "":
                    continue
            if text.startswith("#"):
                self.comment(i, text)
            else:
                self.sample(i, text)
        self.finish()

    def comment(self, i, text):
        m = re.match(r"#[ \t]*(HELP|TYPE)\b", text)
        if not m:
            return  # a plain comment
        if not text.startswith("# " + m.group(1) + " ") and text != "# " + m.group(1):
            self.error(i, "write '# %s name ...' with single spaces" % m.group(1))
            return
        rest = text[len("# HELP "):]
        nm = NAME_RE.match(rest)
        if not nm:
            self.error(i, "%s line without a valid metric name" % m.group(1))
            return
        name = nm.group(0)
        after = rest[nm.end():]
        if after and not after.startswith(" "):
            self.error(i, "invalid metric name %r" % (name + after.split(" ")[0]))
            return
        after = after[1:]
        if m.group(1) == "HELP":
            self.help(i, name, after)
        else:
            self.type(i, name, after)

    def help(self, i, name, text):
        for e in re.finditer(r"\\(.?)", text):
            if e.group(1) not in ("\\", "n"):
                self.error(i, "invalid escape \\%s in HELP of %s (only \\\\ and \\n)" %
                           (e.group(1), name))
        fam = self.enter(name, i)
        if fam.help_line is not None:
            self.error(i, "second HELP for %s (first at line %d)" % (name, fam.help_line))
        elif fam.samples:
            self.error(i, "HELP for %s after its samples" % name)
        fam.help_line = i

    def type(self, i, name, text):
        if text not in TYPES:
            self.error(i, "unknown type %r for %s (one of %s)" % (text, name, ", ".join(TYPES)))
            return
        for other in self.families.values():
            if other.type in ("histogram", "summary") and other.name != name:
                sufs = ("_bucket", "_sum", "_count") if other.type == "histogram" \
                    else ("_sum", "_count")
                if any(name == other.name + s for s in sufs):
                    self.error(i, "family %s collides with the series of %s %s" %
                               (name, other.type, other.name))
        if text in ("histogram", "summary"):
            for s in ("_bucket", "_sum", "_count"):
                if s == "_bucket" and text == "summary":
                    continue
                if name + s in self.families:
                    self.error(i, "%s %s collides with family %s (line %d)" %
                               (text, name, name + s, self.families[name + s].first_line))
        fam = self.enter(name, i)
        if fam.type_line is not None:
            self.error(i, "second TYPE for %s (first at line %d)" % (name, fam.type_line))
            return
        if fam.samples:
            self.error(i, "TYPE for %s after its samples (line %d)" % (name, fam.samples[0][0]))
        fam.type = text
        fam.type_line = i
        if text == "counter" and not name.endswith("_total"):
            self.error(i, "counter %s: counter names end in _total" % name)
        if text != "counter" and name.endswith("_total"):
            self.error(i, "%s %s: only counters end in _total" % (text, name))
        self.check_units(i, name)

    def check_units(self, i, name):
        for word in name.lower().split("_"):
            if word in UNIT_WORDS:
                msg = "name %s uses the unit '%s': use base units (%s)" % (
                    name, word, UNIT_WORDS[word])
                if self.warn_units:
                    self.warnings.append((i, msg))
                else:
                    self.error(i, msg)
                return

    def parse_labels(self, i, text, pos):
        """Parses {...} starting at text[pos] == '{'; returns (labels, end)
        or (None, None) after reporting the error."""
        labels = []
        pos += 1
        if text.startswith("}", pos):
            return labels, pos + 1
        while True:
            m = LABEL_RE.match(text, pos)
            if not m:
                self.error(i, "expected a label name at column %d" % (pos + 1))
                return None, None
            key = m.group(0)
            pos = m.end()
            if not text.startswith('="', pos):
                self.error(i, "expected =\" after label name %s at column %d" % (key, pos + 1))
                return None, None
            pos += 2
            value = []
            while True:
                if pos >= len(text):
                    self.error(i, "unterminated value of label %s" % key)
                    return None, None
                c = text[pos]
                if c == '"':
                    pos += 1
                    break
                if c == "\\":
                    nxt = text[pos + 1: pos + 2]
                    if nxt not in ("\\", '"', "n"):
                        self.error(i, "invalid escape \\%s in label %s (only \\\\ \\\" \\n)" %
                                   (nxt, key))
                        return None, None
                    value.append("\n" if nxt == "n" else nxt)
                    pos += 2
                    continue
                value.append(c)
                pos += 1
            if key.startswith("__"):
                self.error(i, "label name %s is reserved (starts with __)" % key)
            if any(k == key for k, _ in labels):
                self.error(i, "label %s appears twice" % key)
            labels.append((key, "".join(value)))
            if text.startswith("}", pos):
                return labels, pos + 1
            if text.startswith(",}", pos):
                return labels, pos + 2
            if not text.startswith(",", pos):
                self.error(i, "expected , or } at column %d" % (pos + 1))
                return None, None
            pos += 1

    def sample(self, i, text):
        m = NAME_RE.match(text)
        if not m:
            self.error(i, "not a comment or a sample: %r" % text[:60])
            return
        name = m.group(0)
        pos = m.end()
        labels = []
        if text.startswith("{", pos):
            labels, pos = self.parse_labels(i, text, pos)
            if labels is None:
                return
        rest = text[pos:]
        if not rest or rest[0] not in " \t":
            self.error(i, "invalid sample %r: expected a space then a value after the name "
                          "or labels" % text[:60])
            return
        fields = rest.split()
        if len(fields) not in (1, 2):
            self.error(i, "expected 'value [timestamp]' after %s, got %r" % (name, rest.strip()))
            return
        value = parse_float(fields[0])
        if value is None:
            self.error(i, "invalid value %r (a float, +Inf, -Inf or NaN)" % fields[0])
            return
        if len(fields) == 2 and not TS_RE.match(fields[1]):
            self.error(i, "invalid timestamp %r (integer milliseconds)" % fields[1])
            return
        self.n_samples += 1

        fam_name, suffix = self.family_of(name)
        fam = self.enter(fam_name, i)
        if fam.type is None and not fam.samples:
            self.check_units(i, fam_name)
        fam.samples.append((i, name, dict(labels), value))
        key = (name, frozenset(labels))
        if key in self.series:
            self.error(i, "duplicate series %s (first at line %d)" %
                       (fmt_series(name, labels), self.series[key]))
        else:
            self.series[key] = i
        self.check_sample_type(i, fam, name, suffix, dict(labels), value)

    def check_sample_type(self, i, fam, name, suffix, labels, value):
        kind = fam.kind
        if kind == "counter":
            if suffix == "" and not (value >= 0 or value != value):
                self.error(i, "counter %s is negative (%r)" % (name, value))
        elif kind == "histogram":
            if suffix == "":
                self.error(i, "histogram %s: samples are %s_bucket, _sum or _count" %
                           (fam.name, fam.name))
            elif suffix == "_bucket":
                if "le" not in labels:
                    self.error(i, "histogram bucket %s without an le label" % name)
                elif parse_float(labels["le"]) is None or labels["le"] == "NaN":
                    self.error(i, "le=%r is not a number" % labels["le"])
            elif "le" in labels:
                self.error(i, "%s must not carry an le label" % name)
            if value < 0:
                self.error(i, "histogram %s is negative (%r)" % (name, value))
        elif kind == "summary":
            if suffix == "":
                q = labels.get("quantile")
                if q is None:
                    self.error(i, "summary %s: a sample without suffix needs a quantile label"
                               % name)
                else:
                    qv = parse_float(q)
                    if qv is None or not 0 <= qv <= 1:
                        self.error(i, "quantile=%r is not a number in [0, 1]" % q)
            elif "quantile" in labels:
                self.error(i, "%s must not carry a quantile label" % name)

    # -- whole families ----------------------------------------------------

    def finish(self):
        for fam in self.families.values():
            # Lint, as promtool does: warnings only, they do not fail the check.
            if fam.help_line is None and fam.samples:
                self.warnings.append((fam.first_line, "%s has no HELP" % fam.name))
            if ":" in fam.name:
                self.warnings.append((fam.first_line, "%s: colons are for recording rules, "
                                                      "not exporters" % fam.name))
            if fam.type == "histogram":
                self.finish_histogram(fam)
            elif fam.type == "summary":
                self.finish_summary(fam)

    @staticmethod
    def groups(fam, drop):
        out = {}
        for line, name, labels, value in fam.samples:
            key = frozenset((k, v) for k, v in labels.items() if k != drop)
            out.setdefault(key, []).append((line, name[len(fam.name):], labels, value))
        return out

    def finish_histogram(self, fam):
        for key, samples in self.groups(fam, "le").items():
            where = fmt_series(fam.name, sorted(key))
            first = samples[0][0]
            buckets = [(ln, parse_float(lb["le"]), v) for ln, s, lb, v in samples
                       if s == "_bucket" and "le" in lb and parse_float(lb["le"]) is not None]
            count = [(ln, v) for ln, s, _, v in samples if s == "_count"]
            total = [ln for ln, s, _, _ in samples if s == "_sum"]
            if not buckets:
                self.error(first, "histogram %s has no buckets" % where)
                continue
            for (ln0, le0, v0), (ln1, le1, v1) in zip(buckets, buckets[1:]):
                if not le1 > le0:
                    self.error(ln1, "histogram %s: le %r after %r (buckets go in increasing le, "
                                    "each once)" % (where, le1, le0))
                elif v1 < v0:
                    self.error(ln1, "histogram %s: bucket le=%r holds %r, less than le=%r (%r)"
                               % (where, le1, v1, le0, v0))
            inf = [b for b in buckets if b[1] == float("inf")]
            if not inf:
                self.error(buckets[-1][0], "histogram %s has no le=\"+Inf\" bucket" % where)
            if not count:
                self.error(first, "histogram %s has no _count" % where)
            elif inf and count[0][1] != inf[0][2]:
                self.error(count[0][0], "histogram %s: _count %r differs from the +Inf bucket %r"
                           % (where, count[0][1], inf[0][2]))
            if not total:
                self.error(first, "histogram %s has no _sum" % where)

    def finish_summary(self, fam):
        for key, samples in self.groups(fam, "quantile").items():
            where = fmt_series(fam.name, sorted(key))
            suffixes = {s for _, s, _, _ in samples}
            for s in ("_sum", "_count"):
                if s not in suffixes:
                    self.error(samples[0][0], "summary %s has no %s" % (where, s))

    # -- the project's conventions (--moe) ----------------------------------

    def check_moe(self):
        for fam in self.families.values():
            if not fam.samples:
                continue
            if fam.help_line is None:
                self.error(fam.first_line, "%s has no HELP" % fam.name)
            if fam.type is None or fam.type == "untyped":
                self.error(fam.first_line, "%s is untyped (give it a TYPE)" % fam.name)
            if not fam.name.startswith(("moe_", "process_")):
                self.error(fam.first_line, "%s: names start with moe_ or process_" % fam.name)
            info = fam.name.endswith("_info")
            if info and fam.type != "gauge":
                self.error(fam.first_line, "%s: an info metric is a gauge" % fam.name)
            for line, _, labels, value in fam.samples:
                if "expert" in labels and "server" in labels and not info:
                    self.error(line, "%s: a per-expert series carries no server label (a "
                                     "migration would start new series; the placement is "
                                     "moe_expert_placement_info)" % fam.name)
                if info and value != 1:
                    self.error(line, "%s: an info metric's samples are 1" % fam.name)

    # -- report ------------------------------------------------------------

    def report(self, out=sys.stdout, err=sys.stderr):
        for line, msg in sorted(self.warnings):
            print("%s:%d: warning: %s" % (self.source, line, msg), file=err)
        if self.errors:
            for line, msg in sorted(self.errors):
                print("%s:%d: %s" % (self.source, line, msg), file=out)
            print("prom_check: %s: %d violation%s" % (
                self.source, len(self.errors), "" if len(self.errors) == 1 else "s"), file=out)
            return 1
        print("prom_check: ok: %d families, %d samples (%s)" % (
            len(self.families), self.n_samples, self.source), file=out)
        return 0


def check_bytes(data, source="<stdin>", warn_units=False, moe=False):
    c = Checker(source, warn_units)
    c.check(data)
    if moe:
        c.check_moe()
    return c


# ---------------------------------------------------------------------------
# Self-test: every good example passes with its counts, and every bad one is
# rejected with the expected message on the expected line.

GOOD = [
    ("coordinator page", 10, 33, b"""\
# A comment that is neither HELP nor TYPE.
# HELP moe_expert_tokens_total Tokens routed to each expert.
# TYPE moe_expert_tokens_total counter
moe_expert_tokens_total{expert="0",server="0"} 33600
moe_expert_tokens_total{expert="1",server="1"} 0
moe_expert_tokens_created{expert="0",server="0"} 1700000000
# HELP moe_expert_load Smoothed load; a \\\\ and a\\nnewline in help.
# TYPE moe_expert_load gauge
moe_expert_load{expert="0"} 70.25
moe_expert_load{expert="1"} +Inf
moe_expert_load{expert="2"} -Inf
moe_expert_load{expert="3"} NaN
moe_expert_load{expert="4"} -1.5e-07
moe_expert_load{expert="5"} 1e+20

# TYPE moe_up gauge
moe_up 1 1700000000000
# HELP moe_rpc_latency_seconds Expert RPC round trip.
# TYPE moe_rpc_latency_seconds histogram
moe_rpc_latency_seconds_bucket{server="0",le="0.001"} 3
moe_rpc_latency_seconds_bucket{server="0",le="0.01"} 10
moe_rpc_latency_seconds_bucket{server="0",le="+Inf"} 12
moe_rpc_latency_seconds_sum{server="0"} 0.0625
moe_rpc_latency_seconds_count{server="0"} 12
moe_rpc_latency_seconds_bucket{server="1",le="0.001"} 0
moe_rpc_latency_seconds_bucket{server="1",le="0.01"} 0
moe_rpc_latency_seconds_bucket{server="1",le="+Inf"} 0
moe_rpc_latency_seconds_sum{server="1"} 0
moe_rpc_latency_seconds_count{server="1"} 0
moe_rpc_latency_seconds_bucket{server="2",le="+Inf"} 1
moe_rpc_latency_seconds_sum{server="2"} 0.5
moe_rpc_latency_seconds_count{server="2"} 1
# TYPE moe_step_seconds summary
moe_step_seconds{quantile="0.5"} 0.125
moe_step_seconds{quantile="0.99"} 0.5
moe_step_seconds_sum 30
moe_step_seconds_count 120
# TYPE moe_server_info gauge
moe_server_info{endpoint="tcp://127.0.0.1:5600",note="a\\\\b \\"q\\"\\nx",empty=""} 1
moe_server_info{endpoint="tcp://127.0.0.1:5601",utf8="caf\xc3\xa9",} 1
moe:ratio{} 0.5
untyped_without_type 3
moe_server_bytes_total 4
moe_placement_version 1
"""),
    ("empty page", 0, 0, b""),
    ("only comments and blank lines", 0, 0, b"# hello\n\n#\n"),
    ("HELP without text, TYPE before HELP", 1, 1,
     b"# TYPE moe_x gauge\n# HELP moe_x\nmoe_x 2\n"),
]

BAD = [
    # (what, expected line, expected message part, page)
    ("bad metric name", 1, "not a comment or a sample", b"0abc 1\n"),
    ("dash in name", 1, "expected a space then a value", b"moe-x 1\n"),
    ("bad label name", 1, "expected a label name", b'moe_x{0a="1"} 1\n'),
    ("bad label escape", 1, "invalid escape \\t", b'moe_x{a="\\t"} 1\n'),
    ("unterminated label value", 1, "unterminated", b'moe_x{a="1} 1\n'),
    ("unquoted label value", 1, 'expected ="', b"moe_x{a=1} 1\n"),
    ("space inside braces", 1, "expected a label name", b'moe_x{ a="1"} 1\n'),
    ("duplicate label", 1, "label a appears twice", b'moe_x{a="1",a="2"} 1\n'),
    ("reserved label", 1, "reserved", b'moe_x{__name__="y"} 1\n'),
    ("no value", 1, "expected a space then a value", b'moe_x{a="1"}\n'),
    ("comma decimal", 1, "invalid value", b"moe_x 1,5\n"),
    ("Inf without sign", 1, "invalid value 'Inf'", b"moe_x Inf\n"),
    ("lower-case nan", 1, "invalid value 'nan'", b"moe_x nan\n"),
    ("float timestamp", 1, "invalid timestamp", b"moe_x 1 1.5\n"),
    ("three fields", 1, "expected 'value [timestamp]'", b"moe_x 1 2 3\n"),
    ("unknown type", 1, "unknown type", b"# TYPE moe_x gauges\nmoe_x 1\n"),
    ("TYPE twice", 2, "second TYPE", b"# TYPE moe_x gauge\n# TYPE moe_x gauge\nmoe_x 1\n"),
    ("TYPE after samples", 2, "TYPE for moe_x after its samples",
     b"moe_x 1\n# TYPE moe_x gauge\n"),
    ("HELP twice", 2, "second HELP", b"# HELP moe_x a\n# HELP moe_x b\nmoe_x 1\n"),
    ("HELP after samples", 2, "HELP for moe_x after", b"moe_x 1\n# HELP moe_x late\n"),
    ("bad HELP escape", 1, "invalid escape \\t in HELP", b"# HELP moe_x a\\tb\nmoe_x 1\n"),
    ("HELP without space", 1, "single spaces", b"#HELP moe_x a\nmoe_x 1\n"),
    ("HELP without name", 1, "without a valid metric name", b"# HELP \nmoe_x 1\n"),
    ("not contiguous", 3, "not contiguous",
     b'moe_x{a="1"} 1\nmoe_y 1\nmoe_x{a="2"} 1\n'),
    ("TYPE separated from samples", 3, "not contiguous",
     b"# TYPE moe_x gauge\nmoe_y 1\nmoe_x 1\n"),
    ("duplicate series", 2, "duplicate series",
     b'moe_x{a="1",b="2"} 1\nmoe_x{b="2",a="1"} 2\n'),
    ("counter without _total", 1, "counter names end in _total",
     b"# TYPE moe_rows counter\nmoe_rows 1\n"),
    ("negative counter", 2, "is negative", b"# TYPE moe_rows_total counter\nmoe_rows_total -1\n"),
    ("gauge ending in _total", 1, "only counters end in _total",
     b"# TYPE moe_rows_total gauge\nmoe_rows_total 1\n"),
    ("unit ms", 1, "unit 'ms'", b"# TYPE moe_latency_ms gauge\nmoe_latency_ms 1\n"),
    ("unit milliseconds", 1, "unit 'milliseconds'", b"moe_rpc_milliseconds_total 1\n"),
    ("unit kb", 1, "unit 'kb'", b"# TYPE moe_sent_kb_total counter\nmoe_sent_kb_total 1\n"),
    ("histogram without +Inf", 3, "no le=\"+Inf\"",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="1"} 1\nmoe_hist_bucket{le="2"} 1\n'
     b"moe_hist_sum 1\nmoe_hist_count 1\n"),
    ("histogram count mismatch", 5, "differs from the +Inf bucket",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="1"} 1\nmoe_hist_bucket{le="+Inf"} 2\n'
     b"moe_hist_sum 1\nmoe_hist_count 3\n"),
    ("histogram bucket without le", 2, "without an le label",
     b"# TYPE moe_hist histogram\nmoe_hist_bucket 1\nmoe_hist_sum 1\nmoe_hist_count 1\n"),
    ("histogram le not a number", 2, "is not a number",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="x"} 1\nmoe_hist_bucket{le="+Inf"} 1\n'
     b"moe_hist_sum 1\nmoe_hist_count 1\n"),
    ("histogram buckets decrease", 3, "less than",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="1"} 5\nmoe_hist_bucket{le="+Inf"} 4\n'
     b"moe_hist_sum 1\nmoe_hist_count 4\n"),
    ("histogram buckets out of order", 3, "increasing le",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="2"} 1\nmoe_hist_bucket{le="1"} 1\n'
     b'moe_hist_bucket{le="+Inf"} 1\nmoe_hist_sum 1\nmoe_hist_count 1\n'),
    ("histogram without _sum", 2, "has no _sum",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="+Inf"} 1\nmoe_hist_count 1\n'),
    ("histogram without _count", 2, "has no _count",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="+Inf"} 1\nmoe_hist_sum 1\n'),
    ("histogram bare sample", 2, "samples are moe_hist_bucket",
     b'# TYPE moe_hist histogram\nmoe_hist 1\n'),
    ("histogram _sum with le", 3, "must not carry an le",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="+Inf"} 1\nmoe_hist_sum{le="1"} 1\n'
     b"moe_hist_count 1\n"),
    ("family colliding with a histogram", 3, "collides",
     b'# TYPE moe_hist histogram\nmoe_hist_bucket{le="+Inf"} 1\n# TYPE moe_hist_count gauge\n'),
    ("summary quantile out of range", 2, "not a number in [0, 1]",
     b'# TYPE moe_summ summary\nmoe_summ{quantile="1.5"} 1\nmoe_summ_sum 1\nmoe_summ_count 1\n'),
    ("summary without quantile", 2, "needs a quantile",
     b"# TYPE moe_summ summary\nmoe_summ 1\nmoe_summ_sum 1\nmoe_summ_count 1\n"),
    ("summary without _count", 2, "has no _count",
     b'# TYPE moe_summ summary\nmoe_summ{quantile="0.5"} 1\nmoe_summ_sum 1\n'),
    ("trailing whitespace", 1, "whitespace at the start or end", b"moe_x 1 \n"),
    ("leading whitespace", 1, "whitespace at the start or end", b" moe_x 1\n"),
    ("no final newline", 1, "does not end in a newline", b"moe_x 1"),
    ("CRLF", 1, "carriage return", b"moe_x 1\r\n"),
    ("invalid UTF-8", 1, "not valid UTF-8", b'moe_x{a="\xff"} 1\n'),
]

# --moe: the project's conventions (line, part of the message, page).
MOE_GOOD = (b'# HELP moe_expert_rows_routed_total r\n# TYPE moe_expert_rows_routed_total counter\n'
            b'moe_expert_rows_routed_total{expert="0"} 3\n'
            b'# HELP moe_expert_placement_info p\n# TYPE moe_expert_placement_info gauge\n'
            b'moe_expert_placement_info{expert="0",server="1"} 1\n'
            b'# HELP process_cpu_seconds_total c\n# TYPE process_cpu_seconds_total counter\n'
            b'process_cpu_seconds_total 0.5\n')
MOE_BAD = [
    ("expert series with a server label", 3, "carries no server label",
     b'# HELP moe_expert_load l\n# TYPE moe_expert_load gauge\nmoe_expert_load{expert="0",server="1"} 2\n'),
    ("info metric not 1", 3, "samples are 1",
     b'# HELP moe_build_info b\n# TYPE moe_build_info gauge\nmoe_build_info{version="x"} 2\n'),
    ("info metric not a gauge", 1, "is a gauge",
     b'# HELP moe_x_info b\n# TYPE moe_x_info untyped\nmoe_x_info 1\n'),
    ("no HELP", 1, "has no HELP", b'# TYPE moe_x gauge\nmoe_x 1\n'),
    ("untyped", 1, "is untyped", b'# HELP moe_x x\nmoe_x 1\n'),
    ("foreign prefix", 1, "start with moe_", b'# HELP go_x x\n# TYPE go_x gauge\ngo_x 1\n'),
]


def self_test():
    failures = []
    for what, n_fam, n_samples, page in GOOD:
        c = check_bytes(page, what)
        if c.errors or len(c.families) != n_fam or c.n_samples != n_samples:
            failures.append("good example '%s' rejected or miscounted (%d families, %d samples, "
                            "want %d, %d): %s" % (what, len(c.families), c.n_samples, n_fam,
                                                  n_samples, c.errors))
    for what, line, part, page in BAD:
        c = check_bytes(page, what)
        if not c.errors:
            failures.append("bad example '%s' accepted" % what)
        elif not any(ln == line and part in msg for ln, msg in c.errors):
            failures.append("bad example '%s': want line %d with %r, got %s" %
                            (what, line, part, c.errors))
    c = check_bytes(b"moe:x 1\n# HELP moe_y y\nmoe_y 1\n", "lint")
    if c.errors or sorted(c.warnings) != [(1, "moe:x has no HELP"),
                                          (1, "moe:x: colons are for recording rules, "
                                              "not exporters")]:
        failures.append("lint warnings: errors %s, warnings %s" % (c.errors, c.warnings))
    # --warn-units downgrades unit names to warnings, and only those.
    c = check_bytes(b"# HELP moe_latency_ms l\n# TYPE moe_latency_ms gauge\nmoe_latency_ms 1\n",
                    "warn", warn_units=True)
    if c.errors or len(c.warnings) != 1:
        failures.append("--warn-units: errors %s, warnings %s" % (c.errors, c.warnings))
    c = check_bytes(MOE_GOOD, "moe good", moe=True)
    if c.errors:
        failures.append("--moe rejects a good page: %s" % c.errors)
    for what, line, part, page in MOE_BAD:
        c = check_bytes(page, what, moe=True)
        if not any(ln == line and part in msg for ln, msg in c.errors):
            failures.append("--moe: bad example '%s': want line %d with %r, got %s" %
                            (what, line, part, c.errors))
        if check_bytes(page, what).errors:
            failures.append("--moe example '%s' fails without --moe" % what)
    for f in failures:
        print("self-test: FAIL: " + f)
    print("prom_check: self-test: %d good and %d bad examples, %d failure%s" % (
        len(GOOD) + 1, len(BAD) + len(MOE_BAD), len(failures), "" if len(failures) == 1 else "s"))
    return 1 if failures else 0


def main(argv):
    args = list(argv[1:])
    if args == ["--self-test"]:
        return self_test()
    warn_units = moe = False
    required = []
    path = None
    while args:
        a = args.pop(0)
        if a == "--warn-units":
            warn_units = True
        elif a == "--moe":
            moe = True
        elif a == "--require" and args:
            required.append(args.pop(0))
        elif a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        elif path is None and (a == "-" or not a.startswith("-")):
            path = a
        else:
            print("usage: prom_check.py [FILE|-] [--require FAMILY]... [--warn-units] [--moe] | "
                  "--self-test", file=sys.stderr)
            return 2
    if path in (None, "-"):
        data, source = sys.stdin.buffer.read(), "<stdin>"
    else:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            print("prom_check: %s" % e, file=sys.stderr)
            return 2
        source = path
    c = check_bytes(data, source, warn_units, moe)
    for name in required:
        if name not in c.families or not c.families[name].samples:
            c.error(0, "required family %s has no samples" % name)
    return c.report()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
