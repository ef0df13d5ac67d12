#!/usr/bin/env python3
"""Fetches a Prometheus endpoint (or reads a file) and checks it with the reference parser.

  check_prometheus.py URL|FILE 'name{label="v",...}=value' 'name{...}>=value' ...

Parses the text exposition format with prometheus_client (Debian python3-prometheus-client), an
implementation independent of mobula's, then checks every expected sample (labels given must match
exactly; `=`: the value within 1e-9 relative, `>=`: at least) and that every histogram is consistent: cumulative buckets
that never decrease, a +Inf bucket equal to _count. Exit 0 when all holds, 1 with a reason otherwise.
"""
import re
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    src = sys.argv[1]
    if src.startswith("http://"):
        with urllib.request.urlopen(src, timeout=30) as r:
            ctype = r.headers.get("Content-Type", "")
            if not ctype.startswith("text/plain"):
                sys.exit(f"content type {ctype!r}, expected text/plain")
            text = r.read().decode()
    else:
        text = open(src).read()
    samples = {}
    for fam in text_string_to_metric_families(text):
        if fam.type == "histogram":
            series = {}
            for s in fam.samples:
                key = frozenset((k, v) for k, v in s.labels.items() if k != "le")
                series.setdefault(key, {"buckets": [], "count": None})
                if s.name.endswith("_bucket"):
                    series[key]["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_count"):
                    series[key]["count"] = s.value
            for key, h in series.items():
                b = sorted(h["buckets"])
                if not b or b[-1][0] != float("inf"):
                    sys.exit(f"{fam.name}{dict(key)}: no +Inf bucket")
                if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
                    sys.exit(f"{fam.name}{dict(key)}: buckets are not cumulative: {b}")
                if h["count"] != b[-1][1]:
                    sys.exit(f"{fam.name}{dict(key)}: _count {h['count']} != +Inf bucket {b[-1][1]}")
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    for want in sys.argv[2:]:
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?(>=|=)(.+)', want)
        if not m:
            sys.exit(f"bad expectation {want!r}")
        labels = frozenset(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        labels = frozenset((k, v.encode().decode("unicode_escape")) for k, v in labels)
        key = (m.group(1), labels)
        if key not in samples:
            near = [f"{n}{dict(l)}" for (n, l) in samples if n == m.group(1)]
            sys.exit(f"missing {want}; samples of that name: {near}")
        got, exp = samples[key], float(m.group(5))
        if m.group(4) == ">=" and got < exp:
            sys.exit(f"{want}: got {got}")
        if m.group(4) == "=" and abs(got - exp) > 1e-9 * max(1.0, abs(exp)):
            sys.exit(f"{want}: got {got}")
    print(f"ok: {len(samples)} samples, {len(sys.argv) - 2} expectations")


if __name__ == "__main__":
    main()
