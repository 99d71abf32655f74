"""What deploy/prometheus/check.sh and deploy/grafana/check.sh share: the
metric families MetaStore exports (deploy/metrics.txt) and the metric names
a PromQL expression selects."""
import re

# Words that look like identifiers in PromQL but are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "and", "or", "unless", "offset", "inf", "nan"}


def load_known(path):
    """The names listed in metrics.txt (comments and blank lines skipped)."""
    known = set()
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line:
            known.add(line)
    return known


def metric_names(expr):
    """Metric names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)       # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)      # range and subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.:])([A-Za-z_:][\w:]*)\s*(\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(name)
    return names


def is_known(known, name):
    """Listed, as itself or as the histogram it is a series of."""
    return name in known or re.sub(r"_(bucket|sum|count)$", "", name) in known
