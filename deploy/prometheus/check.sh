#!/usr/bin/env bash
# Checks the alert rules:
#   1. promtool check rules alerts.yml     (syntax, PromQL, templates)
#   2. promtool test rules alerts_test.yml (unit tests on synthetic series)
#   3. every metric named in an expr (rules and tests) and in the tests' input
#      series is listed in ../metrics.txt (_bucket/_sum/_count are stripped)
#   4. every alert has a test group where it fires and one where it stays quiet
# Needs promtool (Debian package `prometheus`; scripts/setup.sh installs it)
# and python3 (standard library only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v promtool >/dev/null 2>&1; then
  echo "check: FAILED: promtool not found; install it with 'apt-get install --no-install-recommends prometheus' (scripts/setup.sh does)" >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "check: FAILED: python3 not found" >&2
  exit 1
fi

promtool check rules alerts.yml
promtool test rules alerts_test.yml

python3 - alerts.yml alerts_test.yml ../metrics.txt <<'PY'
import re
import sys

sys.path.insert(0, "..")  # deploy/promql_names.py
import promql_names
from promql_names import load_known, metric_names

rules_path, tests_path, metrics_path = sys.argv[1:4]

known = load_known(metrics_path)


def is_known(name):
    return promql_names.is_known(known, name)

def exprs(path):
    """(line, expr) of every `expr:` in a YAML file, plain or block scalar."""
    lines = open(path).read().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, rest, start = len(m.group(1)), m.group(2), i + 1
        i += 1
        if re.fullmatch(r"[|>][-+]?", rest):
            body = []
            while i < len(lines) and (not lines[i].strip()
                                      or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i])
                i += 1
            rest = "\n".join(body)
        elif rest[:1] in "'\"" and rest[-1:] == rest[:1]:
            rest = rest[1:-1]
        out.append((start, rest))
    return out

errors = []
checked = 0
for path in (rules_path, tests_path):
    for line, expr in exprs(path):
        names = metric_names(expr)
        if not names:
            errors.append(f"{path}:{line}: no metric name found in expr {expr.strip()!r}")
        for n in sorted(names):
            checked += 1
            if not is_known(n):
                errors.append(f"{path}:{line}: metric {n} is not in {metrics_path}")

test_lines = open(tests_path).read().splitlines()
for no, line in enumerate(test_lines, 1):
    m = re.match(r"""^\s*-?\s*series:\s*['"]?([A-Za-z_:][\w:]*)""", line)
    if m:
        checked += 1
        if not is_known(m.group(1)):
            errors.append(f"{tests_path}:{no}: input series {m.group(1)} is not in {metrics_path}")

# Coverage: split the tests into groups (items of the top-level `tests:` list)
# and classify each group's assertions per alert.
alerts = re.findall(r"^\s*-\s+alert:\s*(\S+)", open(rules_path).read(), re.M)
fires, quiet = set(), {}
group, current = 0, None
for line in test_lines:
    if re.match(r"^  - ", line):
        group += 1
    m = re.match(r"^\s*(?:-\s+)?alertname:\s*(\S+)", line)
    if m:
        current = m.group(1)
    m = re.match(r"^\s*exp_alerts:\s*(.*?)\s*(#.*)?$", line)
    if m and current:
        if m.group(1) == "[]":
            quiet.setdefault((group, current), True)
        else:
            fires.add(current)
            quiet[(group, current)] = False
quiet_alerts = {a for (g, a), q in quiet.items() if q}
for a in alerts:
    if a not in fires:
        errors.append(f"{tests_path}: no test group where {a} fires")
    if a not in quiet_alerts:
        errors.append(f"{tests_path}: no test group where {a} stays quiet")

if errors:
    print("check: FAILED:", file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)
    sys.exit(1)
print(f"Metric names: {checked} uses checked, all in {metrics_path}")
print(f"Coverage: {len(alerts)} alerts, each with a firing and a quiet test group")
PY
echo "check: OK"
