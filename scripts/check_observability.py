#!/usr/bin/env python3
"""Checks relay's observability files: the Grafana dashboard, the alert
rules and their unit tests, the metrics catalogue, and (given a scrape of a
live node) that every metric they use is exported.

    scripts/check_observability.py                        # static checks
    scripts/check_observability.py --metrics-file scrape.txt
    scripts/check_observability.py --metrics-url http://127.0.0.1:3000/metrics
    scripts/check_observability.py --list-metrics         # names used, one a line

Needs PyYAML and prometheus_client (scripts/check-observability.sh runs
this script in a virtual environment that has them) and promtool (Debian:
apt-get install prometheus). Static checks:

  1. grafana/relay.json has what Grafana 10+ needs to import it: uid, title,
     schemaVersion >= 38, a `datasource` variable (type datasource, query
     prometheus), `job` and `instance` query variables on that datasource,
     the required rows, and panels with unique ids, a gridPos inside the
     24-column grid without overlaps, a Prometheus datasource, targets with
     unique refIds and an expr, and a unit. Every selector filters on
     job=~"$job" and instance=~"$instance"; every histogram_quantile is
     taken over `sum by (..., le) (rate(..._bucket[...]))`, so quantiles
     aggregate across nodes; rate/increase only over counters.
  2. Every panel expression, with the Grafana variables substituted
     ($__rate_interval -> 1m, $__range -> 1h, $job/$instance -> .+, ...),
     is valid PromQL: they are written as recording rules into a temporary
     rules file and checked with `promtool check rules`.
  3. prometheus/alerts.yml passes `promtool check rules`; every alert has a
     `for` when needed, labels.severity (critical|warning), and annotations
     summary, description and runbook_url ending in
     docs/operations.md#<anchor> where <anchor> is a heading of
     docs/operations.md; every alert is expected to fire in at least one
     test of prometheus/alerts_test.yml, which `promtool test rules` runs;
     helm/relay/files/alerts.yml is an identical copy.
  4. Every metric name used by a panel, a dashboard variable or an alert is
     listed in docs/metrics.md.

With --metrics-file / --metrics-url (exposition text of a live node after
a scenario that exercises the metrics):

  5. the scrape passes `promtool check metrics`;
  6. every metric name used by a panel, a variable or an alert is present in
     it (names are parsed from the expressions, not kept by hand; a
     histogram used as name_bucket must be a histogram, not a summary);
     rate()/increase() only over counters and histograms;
  7. no label is an id (user, order, room, socket ...), no relay_ family has
     more than MAX_SERIES label sets, and every relay_ and process_ family
     of the scrape is listed in docs/metrics.md.

Exit status: 0 when every check passed, 1 when one failed (each failure is
printed, with the missing metric names), 2 on a usage or environment error
(promtool or a Python package missing, a scrape unreadable).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

try:
    import yaml
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as missing:
    print(f"check_observability: Python package {missing.name} missing; run scripts/check-observability.sh, "
          "which installs PyYAML and prometheus_client in a virtual environment", file=sys.stderr)
    sys.exit(2)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = Path("grafana/relay.json")
ALERTS = Path("prometheus/alerts.yml")
ALERTS_TEST = Path("prometheus/alerts_test.yml")
CHART_ALERTS = Path("helm/relay/files/alerts.yml")
METRICS_DOC = Path("docs/metrics.md")
OPERATIONS_DOC = Path("docs/operations.md")

# Rows the dashboard must have (matched case-insensitively as substrings).
REQUIRED_ROWS = ["overview", "connections", "location", "order events", "stream", "acks", "redis",
                 "adapter", "http", "process"]
# Substitutions of Grafana's global variables, for promtool.
GLOBAL_VARS = {
    "__rate_interval": "1m", "__interval": "1m", "__interval_ms": "60000",
    "__range": "1h", "__range_s": "3600", "__range_ms": "3600000",
}
# Series Prometheus makes itself: never in a scrape.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
             "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE"}
# Label names that would carry an unbounded id.
ID_LABELS = {"user", "user_id", "customer", "customer_id", "driver", "driver_id", "store", "store_id", "merchant_id",
             "order", "order_id", "room", "room_id", "sid", "socket", "socket_id", "event_id", "entry_id",
             "token", "ip", "client_ip", "path", "url"}
MAX_SERIES = 150
SEVERITIES = {"critical", "warning", "info"}

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "exp", "floor", "group",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar",
    "histogram_sum", "holt_winters", "double_exponential_smoothing", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time",
    "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time", "quantile_over_time",
    "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sort_by_label",
    "sort_by_label_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh",
    "time", "timestamp", "vector", "year", "info",
}
PROMQL_KEYWORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "and", "or", "unless", "atan2", "start", "end", "inf", "nan",
}

FAILURES: list[str] = []
VERBOSE = False


def fail(msg: str) -> None:
    FAILURES.append(msg)
    print(f"FAIL: {msg}")


def ok(msg: str) -> None:
    if VERBOSE:
        print(f"ok:   {msg}")


def check(cond: bool, msg: str) -> bool:
    if cond:
        ok(msg)
    else:
        fail(msg)
    return cond


class EnvError(Exception):
    """A usage or environment problem (exit status 2)."""


# ------------------------------------------------------------------ PromQL


_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING_RE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.I)
_IDENT_RE = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not
    functions, aggregations, keywords, label names or durations."""
    s = _STRING_RE.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)
    s = re.sub(r"\[[^\]]*\]", "[]", s)
    s = _GROUPING_RE.sub(r"\1", s)
    names = set()
    for m in _IDENT_RE.finditer(s):
        name = m.group(1)
        after = s[m.end():].lstrip()
        # Keywords and aggregations are case-insensitive in PromQL; functions are not.
        if name.lower() in PROMQL_KEYWORDS or (name in PROMQL_FUNCTIONS and after.startswith("(")):
            continue
        names.add(name)
    return names


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matcher text) of every selector, "" when bare."""
    s = _STRING_RE.sub(lambda m: "\0" * len(m.group(0)), expr)
    out = []
    for name in metric_names(expr):
        for m in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])", s):
            rest = expr[m.end():]
            brace = re.match(r"\s*\{([^}]*)\}", rest)
            out.append((name, brace.group(1) if brace else ""))
    return out


def substitute(expr: str, variables: set[str]) -> tuple[str, list[str]]:
    """Grafana variables -> values promtool accepts; returns unknown ones."""
    unknown: list[str] = []

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():  # $1 in label_replace
            return m.group(0)
        if name in GLOBAL_VARS:
            return GLOBAL_VARS[name]
        if name in variables:
            return ".+"
        unknown.append(name)
        return m.group(0)

    out = re.sub(r"\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)(?::[\w]+)?\]\]|\$(\w+)", repl, expr)
    return out, unknown


# ------------------------------------------------------------------ promtool


def promtool(args: list[str], tool: str, stdin: str | None = None) -> tuple[int, str]:
    proc = subprocess.run([tool, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


# ------------------------------------------------------------------ dashboard


def check_dashboard(dash: dict[str, Any], tool: str, tmp: Path) -> tuple[set[str], list[str]]:
    """Structure and PromQL of the dashboard; returns the metric names used
    and the expressions (for the rate() lint against a scrape)."""
    where = str(DASHBOARD)
    check(isinstance(dash.get("uid"), str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash.get("uid", "")) is not None,
          f"{where}: uid (1-40 of [A-Za-z0-9_-])")
    check(isinstance(dash.get("title"), str) and dash["title"].strip() != "", f"{where}: title")
    check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 38,
          f"{where}: schemaVersion >= 38 (Grafana 10+)")
    check(dash.get("id") is None, f"{where}: no numeric id (an import would clash)")
    check(isinstance(dash.get("time"), dict) and "from" in dash["time"], f"{where}: default time range")

    templ = dash.get("templating", {}).get("list", [])
    variables = {v.get("name"): v for v in templ if isinstance(v, dict)}
    check(len(variables) == len(templ), f"{where}: template variables have unique names")
    ds = variables.get("datasource", {})
    check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
          f"{where}: variable `datasource` of type datasource with query prometheus")
    names: set[str] = set()
    var_exprs: list[tuple[str, str]] = []
    for var in ("job", "instance"):
        v = variables.get(var, {})
        if not check(v.get("type") == "query", f"{where}: query variable `{var}`"):
            continue
        check(v.get("datasource", {}).get("uid") in ("${datasource}", "$datasource"),
              f"{where}: variable `{var}` queries the $datasource")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q or "")
        if check(m is not None and m.group(2) == var, f"{where}: variable `{var}` is label_values(..., {var})"):
            var_exprs.append((f"variable {var}", m.group(1)))
    inst = variables.get("instance", {})
    check(inst.get("multi") is True and inst.get("includeAll") is True, f"{where}: `instance` is multi-value with All")

    panels = dash.get("panels")
    if not check(isinstance(panels, list) and panels, f"{where}: panels"):
        return names, []
    flat: list[dict[str, Any]] = []
    for p in panels:
        flat.append(p)
        if p.get("type") == "row":
            flat.extend(p.get("panels") or [])
    ids = [p.get("id") for p in flat]
    check(all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"{where}: panel ids unique integers")

    rows = [p.get("title", "").lower() for p in flat if p.get("type") == "row"]
    for want in REQUIRED_ROWS:
        check(any(want in r for r in rows), f"{where}: a row about {want!r}")
    check(panels[0].get("type") == "row", f"{where}: the first panel is a row")

    boxes: list[tuple[str, int, int, int, int]] = []
    rule_exprs: list[tuple[str, str]] = []
    exprs: list[str] = []
    for p in flat:
        label = f"{where}: panel {p.get('id')} {p.get('title', '')!r}"
        g = p.get("gridPos", {})
        if check(all(isinstance(g.get(k), int) for k in "hwxy") and g["h"] > 0 and g["w"] > 0 and g["x"] >= 0
                 and g["y"] >= 0 and g["x"] + g["w"] <= 24, f"{label}: gridPos inside the 24-column grid"):
            boxes.append((label, g["x"], g["y"], g["w"], g["h"]))
        check(isinstance(p.get("title"), str) and p["title"].strip() != "", f"{label}: title")
        if p.get("type") == "row":
            check(g.get("w") == 24 and g.get("h") == 1, f"{label}: row is 24 wide, 1 high")
            check(p.get("collapsed") is False or isinstance(p.get("panels"), list), f"{label}: row panels list")
            continue
        check(isinstance(p.get("type"), str) and p["type"] in {"timeseries", "stat", "table", "gauge", "bargauge",
                                                             "heatmap", "text", "state-timeline"},
              f"{label}: known panel type")
        pds = p.get("datasource") or {}
        check(pds.get("type") == "prometheus" and pds.get("uid") in ("${datasource}", "$datasource"),
              f"{label}: datasource is the $datasource variable (type prometheus)")
        if p.get("type") in ("timeseries", "stat", "gauge", "bargauge"):
            check(bool(p.get("fieldConfig", {}).get("defaults", {}).get("unit")), f"{label}: unit set")
        targets = p.get("targets")
        if not check(isinstance(targets, list) and targets, f"{label}: targets"):
            continue
        refs = [t.get("refId") for t in targets]
        check(all(refs) and len(set(refs)) == len(refs), f"{label}: unique refIds")
        for t in targets:
            expr = t.get("expr")
            tlabel = f"{label} target {t.get('refId')}"
            if not check(isinstance(expr, str) and expr.strip(), f"{tlabel}: expr"):
                continue
            tds = t.get("datasource")
            if tds is not None:
                check(tds.get("uid") in ("${datasource}", "$datasource"), f"{tlabel}: datasource $datasource")
            exprs.append(expr)
            rule_exprs.append((tlabel, expr))
            check_panel_expr(tlabel, expr)

    for a in range(len(boxes)):
        la, xa, ya, wa, ha = boxes[a]
        for b in range(a + 1, len(boxes)):
            lb, xb, yb, wb, hb = boxes[b]
            if xa < xb + wb and xb < xa + wa and ya < yb + hb and yb < ya + ha:
                fail(f"gridPos overlap: {la} and {lb}")

    # Valid PromQL: promtool over recording rules made of the expressions.
    known = set(variables) - {"datasource"}
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    sources = []
    for n, (label, expr) in enumerate(var_exprs + rule_exprs):
        sub, unknown = substitute(expr, known)
        if unknown:
            fail(f"{label}: undefined variable(s) {', '.join('$' + u for u in unknown)}")
            continue
        names |= metric_names(sub)
        sources.append(label)
        lines.append(f"      - record: dashboard:expr_{n}")
        lines.append(f"        expr: {json.dumps(sub)}")
    rules = tmp / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    rc, out = promtool(["check", "rules", str(rules)], tool)
    if not check(rc == 0, f"{where}: every panel expression is valid PromQL (promtool check rules, "
                          f"{len(sources)} expressions)"):
        for m in re.finditer(r"rule (\d+)", out):
            idx = int(m.group(1)) - 1
            if 0 <= idx < len(sources):
                print(f"      {sources[idx]}")
        print(indent_text(out))
    return names, exprs


def check_panel_expr(label: str, expr: str) -> None:
    for name, matchers in selectors(expr):
        if name in SYNTHETIC:
            continue
        check('job=~"$job"' in matchers and 'instance=~"$instance"' in matchers,
              f'{label}: {name} filtered by job=~"$job",instance=~"$instance"')
    for m in re.finditer(r"histogram_quantile\(", expr):
        body = expr[m.end():]
        check(re.match(r"\s*[0-9.]+\s*,\s*sum\s+by\s*\(([^)]*\ble\b[^)]*)\)\s*\(\s*rate\(\s*[\w:]+_bucket\{", body)
              is not None, f"{label}: histogram_quantile over sum by (..., le) (rate(..._bucket[...]))")
    check_rate_args(label, expr)


def check_rate_args(label: str, expr: str, types: dict[str, str] | None = None) -> None:
    for m in re.finditer(r"\b(rate|irate|increase)\(\s*([A-Za-z_:][\w:]*)", expr):
        name = m.group(2)
        if types is None:
            check(re.search(r"(_total|_bucket|_sum|_count)$", name) is not None,
                  f"{label}: {m.group(1)}() over a counter ({name})")
        elif type_of(name, types):
            t = type_of(name, types)
            check(t in ("counter", "histogram", "summary"),
                  f"{label}: {m.group(1)}() over {name}, which the scrape declares a {t}")


# ------------------------------------------------------------------ alerts


def github_anchor(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def load_yaml(rel: Path) -> Any:
    with (ROOT / rel).open() as f:  # a stream, so that errors name the file
        return yaml.safe_load(f)


def check_alerts(tool: str) -> tuple[set[str], list[str]]:
    """The rules, their runbooks and tests; returns the metric names used
    and the expressions."""
    where = str(ALERTS)
    rc, out = promtool(["check", "rules", str(ALERTS)], tool)
    if not check(rc == 0, f"{where}: promtool check rules"):
        print(indent_text(out))
    try:
        data = load_yaml(ALERTS)
    except (yaml.YAMLError, OSError) as e:
        fail(f"{ALERTS}: not readable YAML: {e}")
        return set(), []
    anchors = {github_anchor(m.group(1)) for m in
               re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", read(OPERATIONS_DOC), re.M)}
    names: set[str] = set()
    exprs: list[str] = []
    alerts: list[str] = []
    for group in (data or {}).get("groups") or []:
        for rule in group.get("rules") or []:
            expr = str(rule.get("expr", ""))
            exprs.append(expr)
            names |= metric_names(expr)
            check_rate_args(f"{where}: rule {rule.get('alert') or rule.get('record')}", expr)
            if "alert" not in rule:
                continue
            alert = rule["alert"]
            alerts.append(alert)
            label = f"{where}: {alert}"
            check(re.fullmatch(r"Relay[A-Z]\w+", alert) is not None, f"{label}: named Relay<CamelCase>")
            check(rule.get("labels", {}).get("severity") in SEVERITIES,
                  f"{label}: labels.severity one of {sorted(SEVERITIES)}")
            ann = rule.get("annotations") or {}
            for key in ("summary", "description", "runbook_url"):
                check(isinstance(ann.get(key), str) and ann[key].strip() != "", f"{label}: annotations.{key}")
            url = ann.get("runbook_url", "")
            m = re.search(r"docs/operations\.md#([\w-]+)$", url)
            if check(m is not None, f"{label}: runbook_url ends in docs/operations.md#<anchor>"):
                check(m.group(1) in anchors, f"{label}: runbook anchor #{m.group(1)} is a heading of {OPERATIONS_DOC}")
                check(m.group(1) == alert.lower(), f"{label}: runbook anchor is #{alert.lower()}")
            # Without `for`, only an edge (a counter that moved) may fire at once.
            check("for" in rule or re.search(r"\b(increase|changes|resets)\(", expr) is not None,
                  f"{label}: has a `for` duration")
    check(len(alerts) == len(set(alerts)), f"{where}: alert names unique")

    # Every alert fires in at least one unit test.
    try:
        tests = load_yaml(ALERTS_TEST) or {}
    except (yaml.YAMLError, OSError) as e:
        fail(f"{ALERTS_TEST}: not readable YAML: {e}")
        tests = {}
    fired = set()
    tested = set()
    for test in tests.get("tests") or []:
        for case in test.get("alert_rule_test") or []:
            tested.add(case.get("alertname"))
            if case.get("exp_alerts"):
                fired.add(case.get("alertname"))
    for alert in alerts:
        check(alert in fired, f"{ALERTS_TEST}: {alert} fires in some test")
    check(tested <= set(alerts), f"{ALERTS_TEST}: tests only name existing alerts ({sorted(tested - set(alerts))})")
    rc, out = promtool(["test", "rules", str(ALERTS_TEST)], tool)
    if not check(rc == 0, f"{ALERTS_TEST}: promtool test rules"):
        print(indent_text(out))

    check(read(CHART_ALERTS) == read(ALERTS),
          f"{CHART_ALERTS} is a copy of {ALERTS} (cp {ALERTS} {CHART_ALERTS})")
    return names, exprs


# ------------------------------------------------------------------ scrape


def parse_scrape(text: str) -> tuple[dict[str, str], dict[str, set[tuple[tuple[str, str], ...]]]]:
    """TYPE of each family, keyed by its name in the exposition, and the
    label sets of each sample name. Raises ValueError on malformed text."""
    types: dict[str, str] = {}
    samples: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(text):
        # "unknown": no TYPE line. The parser drops a counter's _total suffix
        # from the family name (a counter without one fails promtool).
        if family.type != "unknown":
            types[family.name + "_total" if family.type == "counter" else family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, set()).add(tuple(sorted(sample.labels.items())))
    return types, samples


def type_of(name: str, types: dict[str, str]) -> str | None:
    for cand in (name, base_name(name), name.removesuffix("_total")):
        if cand in types:
            return types[cand]
    return None


def family_of(sample: str, types: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_created", "_total", "_info"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in types:
            return sample[: -len(suffix)]
    return sample


def check_scrapes(scrapes: list[tuple[str, str]], used: dict[str, set[str]], exprs: list[str],
                  documented: set[str], tool: str) -> None:
    """Each node's scrape on its own (format, labels, catalogue); the names
    used over all of them together, as Prometheus sees a cluster."""
    types: dict[str, str] = {}
    samples: dict[str, set] = {}
    for where, text in scrapes:
        node_types, node_samples = check_node_scrape(where, text, documented, tool)
        types.update(node_types)
        for sample, label_sets in node_samples.items():
            samples.setdefault(sample, set()).update(label_sets)
    if not samples:
        return
    where = "scrape" if len(scrapes) == 1 else f"{len(scrapes)} scrapes"

    missing = []
    for name in sorted(used):
        if name in SYNTHETIC:
            continue
        if name in samples:
            continue
        base = base_name(name)
        if name != base and types.get(base) == "summary":
            fail(f"{where}: {base} is a summary, but {', '.join(sorted(used[name]))} use(s) {name}: "
                 f"give it histogram buckets")
            continue
        missing.append(name)
    if missing:
        grouped: dict[str, tuple[list[str], set[str]]] = {}
        for name in missing:
            suffixes, users = grouped.setdefault(base_name(name), ([], set()))
            if name != base_name(name):
                suffixes.append(name[len(base_name(name)):])
            users.update(used[name])
        fail(f"{where}: {len(grouped)} metric(s) used by the dashboard or the alerts are not exported:")
        for base, (suffixes, users) in grouped.items():
            kind = f" (histogram, used as {', '.join(suffixes)}: no observation yet?)" if suffixes else ""
            print(f"      {base}{kind}  <- {', '.join(sorted(users))}")
    else:
        ok(f"{where}: all {len(used)} metric names used are exported")

    for expr in exprs:
        check_rate_args(f"{where}: {expr[:60]}...", expr, types)


def check_node_scrape(where: str, text: str, documented: set[str], tool: str) -> tuple[dict, dict]:
    rc, out = promtool(["check", "metrics"], tool, stdin=text)
    if not check(rc == 0, f"{where}: promtool check metrics"):
        print(indent_text(out))
    try:
        types, samples = parse_scrape(text)
    except ValueError as e:
        fail(f"{where}: not Prometheus text exposition format: {str(e) or 'a malformed line'}")
        return {}, {}
    if not check(bool(samples), f"{where}: has samples"):
        return types, samples
    by_family: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for sample, label_sets in samples.items():
        fam = family_of(sample, types)
        for labels in label_sets:
            bad = {k for k, _ in labels} & ID_LABELS
            if bad:
                fail(f"{where}: {sample} has id-like label(s) {sorted(bad)}")
                break
        if fam.startswith("relay_"):
            by_family.setdefault(fam, set()).update(
                tuple(kv for kv in labels if kv[0] not in ("le", "quantile")) for labels in label_sets)
    for fam, label_sets in sorted(by_family.items()):
        check(len(label_sets) <= MAX_SERIES, f"{where}: {fam} has {len(label_sets)} series (<= {MAX_SERIES})")
    families = {family_of(s, types) for s in samples} | set(types)
    for fam in sorted(families):
        if fam.startswith(("relay_", "process_")):
            check(fam in documented, f"{METRICS_DOC}: documents {fam}, which the node exports")
    return types, samples


# ------------------------------------------------------------------ main


def read(rel: Path) -> str:
    try:
        return (ROOT / rel).read_text()
    except OSError as e:
        fail(f"{rel}: {e.strerror}")
        return ""


def indent_text(text: str) -> str:
    return "\n".join("      " + ln for ln in text.splitlines())


def documented_names() -> set[str]:
    text = read(METRICS_DOC)
    return set(re.findall(r"`((?:relay|process)_[a-z0-9_]+)", text))


def main() -> int:
    global VERBOSE, ROOT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--metrics-file", type=Path, action="append",
                     help="exposition text of a live node (a scrape of /metrics); repeat it for each node "
                          "of a cluster: names used must be exported by at least one")
    src.add_argument("--metrics-url", help="scrape this URL instead (e.g. http://127.0.0.1:3000/metrics)")
    ap.add_argument("--promtool", default=os.environ.get("PROMTOOL", "promtool"), help="promtool binary")
    ap.add_argument("--list-metrics", action="store_true",
                    help="print the metric names the dashboard and the alerts use, one a line, and exit")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="repository to check (default: this script's; used to test the checker on broken copies)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print passing checks too")
    args = ap.parse_args()
    VERBOSE = args.verbose
    ROOT = args.root.resolve()

    tool = shutil.which(args.promtool)
    if tool is None:
        raise EnvError(f"promtool not found ({args.promtool}); install it: apt-get install prometheus")
    try:
        dash = json.loads((ROOT / DASHBOARD).read_text())
    except (OSError, ValueError) as e:
        fail(f"{DASHBOARD}: not readable JSON: {e}")
        dash = {}

    scrapes: list[tuple[str, str]] = []
    for path in args.metrics_file or []:
        try:
            scrapes.append((str(path), path.read_text()))
        except OSError as e:
            raise EnvError(f"cannot read {path}: {e}") from e
    if args.metrics_url:
        try:
            with urllib.request.urlopen(args.metrics_url, timeout=10) as resp:
                scrapes.append((args.metrics_url, resp.read().decode()))
        except OSError as e:
            raise EnvError(f"cannot scrape {args.metrics_url}: {e}") from e

    with tempfile.TemporaryDirectory(prefix="relay-observability-") as tmp:
        used: dict[str, set[str]] = {}
        dash_names, exprs = check_dashboard(dash, tool, Path(tmp)) if dash else (set(), [])
        for n in dash_names:
            used.setdefault(n, set()).add(str(DASHBOARD))
        alert_names, alert_exprs = check_alerts(tool)
        for n in alert_names:
            used.setdefault(n, set()).add(str(ALERTS))
        exprs = exprs + alert_exprs
        if args.list_metrics:
            print("\n".join(sorted(used)))
            return 1 if FAILURES else 0
        documented = documented_names()
        bases: dict[str, set[str]] = {}
        for name, users in used.items():
            if name not in SYNTHETIC:
                bases.setdefault(name if name in documented else base_name(name), set()).update(users)
        for base, users in sorted(bases.items()):
            check(base in documented, f"{METRICS_DOC}: documents {base} (used by {', '.join(sorted(users))})")
        if scrapes:
            check_scrapes(scrapes, used, exprs, documented, tool)

    total = f"{len({base_name(n) for n in used if n not in SYNTHETIC})} metrics used"
    if FAILURES:
        print(f"check_observability: {len(FAILURES)} failure(s); {total}")
        return 1
    print(f"check_observability: all passed; {total}" + ("" if scrapes else " (no scrape given)"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EnvError as e:
        print(f"check_observability: {e}", file=sys.stderr)
        sys.exit(2)
