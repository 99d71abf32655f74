#!/usr/bin/env bash
# Checks the Grafana dashboard metastore.json:
#   1. it is well-formed JSON (python3 -m json.tool)
#   2. its structure: unique panel ids, panels inside the 24-column grid, every
#      query panel on the ${datasource} variable, the datasource and instance
#      variables present
#   3. every metric named in a query (panels and template variables) is listed
#      in ../metrics.txt (_bucket/_sum/_count are stripped)
#   4. with promtool installed: every query parses as PromQL (Grafana's
#      $variables replaced by sample values)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v python3 >/dev/null 2>&1; then
  echo "check: FAILED: python3 not found" >&2
  exit 1
fi

python3 -m json.tool metastore.json >/dev/null
echo "metastore.json: well-formed JSON"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - metastore.json ../metrics.txt "$tmp/queries.yml" <<'PY'
import json
import re
import sys

sys.path.insert(0, "..")  # deploy/promql_names.py
import promql_names
from promql_names import load_known, metric_names

dash_path, metrics_path, rules_out = sys.argv[1:4]
dash = json.load(open(dash_path))

known = load_known(metrics_path)


def is_known(name):
    return promql_names.is_known(known, name)

errors = []
exprs = []  # (where, promql)

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))

ids = {}
for p in walk(dash.get("panels", [])):
    where = f"panel {p.get('id')} {p.get('title')!r}"
    if p.get("id") in ids:
        errors.append(f"{where}: id also used by {ids[p['id']]!r}")
    ids[p.get("id")] = p.get("title")
    g = p.get("gridPos", {})
    if not g or g.get("x", 0) + g.get("w", 0) > 24:
        errors.append(f"{where}: gridPos missing or wider than 24 columns: {g}")
    targets = p.get("targets", [])
    if targets and (p.get("datasource") or {}).get("uid") != "${datasource}":
        errors.append(f"{where}: datasource is not the ${{datasource}} variable")
    for t in targets:
        if not t.get("expr"):
            errors.append(f"{where}: target {t.get('refId')} has no expr")
        else:
            exprs.append((f"{where} target {t.get('refId')}", t["expr"]))

variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource", {})
if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append("templating: no `datasource` variable of type datasource/prometheus")
if "instance" not in variables:
    errors.append("templating: no `instance` variable")
for name, v in variables.items():
    if v.get("type") != "query":
        continue
    query = v.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    # label_values(metric_selector, label) / query_result(promql) / metrics(regex)
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query or "")
    if m:
        exprs.append((f"variable {name}", m.group(1)))
        continue
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query or "")
    if m:
        exprs.append((f"variable {name}", m.group(1)))

if not exprs:
    errors.append("no queries found")
uses = 0
for where, expr in exprs:
    names = metric_names(expr)
    if not names:
        errors.append(f"{where}: no metric name found in {expr!r}")
    for n in sorted(names):
        uses += 1
        if not is_known(n):
            errors.append(f"{where}: metric {n} is not in {metrics_path}")

# The queries as recording rules, for promtool to parse.
with open(rules_out, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (_, expr) in enumerate(exprs):
        e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
        e = re.sub(r"\$\{?\w+\}?", ".*", e)
        f.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(e)}\n")

if errors:
    print("check: FAILED:", file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)
    sys.exit(1)
print(f"Panels: {len(ids)} (ids unique, on the 24-column grid, on ${{datasource}})")
print(f"Metric names: {uses} uses in {len(exprs)} queries, all in {metrics_path}")
PY

if command -v promtool >/dev/null 2>&1; then
  if ! out=$(promtool check rules "$tmp/queries.yml" 2>&1); then
    echo "$out" >&2
    echo "check: FAILED: a dashboard query is not valid PromQL" >&2
    exit 1
  fi
  echo "PromQL: every query parses (promtool)"
else
  echo "PromQL: NOT parsed: promtool not found (scripts/setup.sh installs it)"
fi
echo "check: OK"
