#!/usr/bin/env python3
"""Checks relay's observability files: the Grafana dashboard, the alert
rules and their unit tests, the metrics catalogue, and (given a scrape of a
live node) that every metric they use is exported.

    scripts/check_observability.py                        # static checks
    scripts/check_observability.py --metrics-file scrape.txt
    scripts/check_observability.py --metrics-url http://127.0.0.1:3000/metrics
    scripts/check_observability.py --list-metrics         # names used, one a line

Python 3 standard library only, plus promtool (Debian: apt-get install
prometheus). Static checks:

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
(promtool missing, file unreadable).
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


# ------------------------------------------------------------------ YAML subset


class YamlError(ValueError):
    pass


_KEY_RE = re.compile(
    r"""(?P<key>"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s'"#\[\]{},&*!|>%@`-][^#]*?|-[^\s#][^#]*?)\s*:(?:\s+|$)""")
_INT_RE = re.compile(r"[-+]?[0-9]+")
_FLOAT_RE = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")


class MiniYaml:
    """A strict parser for the block-style YAML of Prometheus rule and test
    files: mappings, sequences, plain, quoted and block (| |- > >-) scalars,
    and the empty flow collections [] and {}. Anything else (anchors, tags,
    flow collections with content, multi-line plain scalars, several
    documents) is an error, never a silent misreading."""

    def __init__(self, text: str, name: str) -> None:
        self.lines = text.replace("\r\n", "\n").split("\n")
        self.name = name
        self.i = 0

    def error(self, msg: str, line: int | None = None) -> YamlError:
        n = (self.i if line is None else line) + 1
        return YamlError(f"{self.name}:{n}: {msg} (scripts/check_observability.py reads a YAML subset)")

    @staticmethod
    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    @staticmethod
    def strip_comment(s: str) -> str:
        quote = None
        i = 0
        while i < len(s):
            c = s[i]
            if quote == "'":
                if c == "'":
                    if i + 1 < len(s) and s[i + 1] == "'":
                        i += 2
                        continue
                    quote = None
            elif quote == '"':
                if c == "\\":
                    i += 2
                    continue
                if c == '"':
                    quote = None
            elif c in "'\"" and (i == 0 or s[i - 1] in " :-[{,"):
                quote = c
            elif c == "#" and (i == 0 or s[i - 1] in " \t"):
                return s[:i].rstrip()
            i += 1
        return s.rstrip()

    def skip_blank(self) -> None:
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if "\t" in line[: self.indent(line) + 1] and line.strip():
                raise self.error("tab in indentation")
            stripped = line.strip()
            if stripped == "" or stripped.startswith("#"):
                self.i += 1
                continue
            if stripped in ("---", "..."):
                if self.i == 0 or all(not x.strip() or x.strip().startswith("#") for x in self.lines[: self.i]):
                    self.i += 1
                    continue
                raise self.error("several YAML documents")
            return

    def parse(self) -> Any:
        self.skip_blank()
        if self.i >= len(self.lines):
            return None
        value = self.node(self.indent(self.lines[self.i]))
        self.skip_blank()
        if self.i < len(self.lines):
            raise self.error("unexpected indentation")
        return value

    def content(self) -> tuple[int, str]:
        line = self.lines[self.i]
        cur = self.indent(line)
        return cur, self.strip_comment(line[cur:])

    @staticmethod
    def is_item(content: str) -> bool:
        return content == "-" or content.startswith("- ")

    def node(self, ind: int) -> Any:
        _, content = self.content()
        return self.sequence(ind) if self.is_item(content) else self.mapping(ind)

    def sequence(self, ind: int) -> list[Any]:
        items: list[Any] = []
        while True:
            self.skip_blank()
            if self.i >= len(self.lines):
                return items
            cur, content = self.content()
            if cur < ind or (cur == ind and not self.is_item(content)):
                return items
            if cur > ind or not self.is_item(content):
                raise self.error("bad indentation in a sequence")
            rest = content[1:].lstrip(" ")
            col = cur + (len(content) - len(rest))
            if rest == "":
                self.i += 1
                self.skip_blank()
                if self.i >= len(self.lines) or self.indent(self.lines[self.i]) <= ind:
                    items.append(None)
                else:
                    items.append(self.node(self.indent(self.lines[self.i])))
            elif self.is_item(rest) or _KEY_RE.match(rest):
                line = self.lines[self.i]
                self.lines[self.i] = " " * col + line[col:]
                items.append(self.node(col))
            else:
                items.append(self.value(rest, ind))

    def mapping(self, ind: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            self.skip_blank()
            if self.i >= len(self.lines):
                return out
            cur, content = self.content()
            if cur < ind:
                return out
            if cur > ind:
                raise self.error("bad indentation (a multi-line plain scalar?)")
            if self.is_item(content):
                raise self.error("sequence item where a mapping key was expected")
            m = _KEY_RE.match(content)
            if not m:
                raise self.error(f"expected `key: value`, got {content!r}")
            key = self.scalar(m.group("key").strip(), plain_typed=False)
            if not isinstance(key, str):
                raise self.error("non-string key")
            if key in out:
                raise self.error(f"duplicate key {key!r}")
            rest = content[m.end():].strip()
            if rest == "":
                self.i += 1
                self.skip_blank()
                if self.i >= len(self.lines):
                    out[key] = None
                    continue
                ncur, ncontent = self.content()
                if ncur > ind or (ncur == ind and self.is_item(ncontent)):
                    out[key] = self.node(ncur)
                else:
                    out[key] = None
            else:
                out[key] = self.value(rest, ind)

    def value(self, rest: str, parent: int) -> Any:
        if rest[0] in "|>":
            return self.block_scalar(rest, parent)
        if rest[0] in "&*!%@`":
            raise self.error(f"unsupported YAML syntax {rest[0]!r}")
        self.i += 1
        return self.scalar(rest, plain_typed=True)

    def block_scalar(self, header: str, parent: int) -> str:
        m = re.fullmatch(r"([|>])([-+]?)", header)
        if not m or m.group(2) == "+":
            raise self.error(f"unsupported block scalar header {header!r}")
        style, chomp = m.groups()
        start = self.i
        self.i += 1
        lines: list[str] = []
        block = None
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            if raw.strip() == "":
                lines.append("")
                self.i += 1
                continue
            cur = self.indent(raw)
            if cur <= parent:
                break
            if block is None:
                block = cur
            if cur < block:
                raise self.error("block scalar line less indented than its first line")
            lines.append(raw[block:])
            self.i += 1
        while lines and lines[-1] == "":
            lines.pop()
        if not lines:
            raise self.error("empty block scalar", start)
        if style == "|":
            text = "\n".join(lines)
        else:
            if any(ln[:1] in (" ", "\t") for ln in lines):
                raise self.error("more-indented lines in a folded scalar", start)
            text = ""
            breaks = 0
            for ln in lines:
                if ln == "":
                    breaks += 1
                    continue
                if text:
                    text += "\n" * breaks if breaks else " "
                text += ln
                breaks = 0
        return text if chomp == "-" else text + "\n"

    def scalar(self, s: str, plain_typed: bool) -> Any:
        if s.startswith("'"):
            if not (len(s) >= 2 and s.endswith("'")):
                raise self.error("unterminated or multi-line single-quoted scalar")
            return s[1:-1].replace("''", "'")
        if s.startswith('"'):
            if not (len(s) >= 2 and s.endswith('"')):
                raise self.error("unterminated or multi-line double-quoted scalar")
            return self.unescape(s[1:-1])
        if s in ("[]", "{}"):
            return [] if s == "[]" else {}
        if s[0] in "[{":
            raise self.error("flow collections with content are not supported")
        if not plain_typed:
            return s
        if s in ("~", "null", "Null", "NULL"):
            return None
        if s in ("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"):
            return True
        if s in ("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"):
            return False
        if _INT_RE.fullmatch(s):
            if re.fullmatch(r"[-+]?0[0-9]+", s):
                raise self.error(f"ambiguous (octal in YAML 1.1) number {s!r}: quote it")
            return int(s)
        if _FLOAT_RE.fullmatch(s):
            return float(s.replace("Inf", "inf").replace("INF", "inf").replace(".inf", "inf")
                         .replace(".nan", "nan").replace(".NaN", "nan").replace(".NAN", "nan"))
        return s

    def unescape(self, s: str) -> str:
        out = []
        i = 0
        simple = {"\\": "\\", '"': '"', "/": "/", "n": "\n", "t": "\t", "r": "\r", "0": "\0", " ": " "}
        while i < len(s):
            c = s[i]
            if c != "\\":
                out.append(c)
                i += 1
                continue
            nxt = s[i + 1: i + 2]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
            elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 2: i + 6]):
                out.append(chr(int(s[i + 2: i + 6], 16)))
                i += 6
            else:
                raise self.error(f"unsupported escape \\{nxt}")
        return "".join(out)


def load_yaml(path: Path) -> Any:
    text = path.read_text()
    data = MiniYaml(text, str(path)).parse()
    try:  # When PyYAML happens to be there, make sure both read the same.
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return data
    if yaml.safe_load(text) != data:
        fail(f"{path}: the built-in YAML reader and PyYAML disagree; simplify the YAML")
    return data


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


def check_alerts(tool: str) -> tuple[set[str], list[str]]:
    """The rules, their runbooks and tests; returns the metric names used
    and the expressions."""
    where = str(ALERTS)
    rc, out = promtool(["check", "rules", str(ALERTS)], tool)
    if not check(rc == 0, f"{where}: promtool check rules"):
        print(indent_text(out))
    try:
        data = load_yaml(ROOT / ALERTS)
    except (YamlError, OSError) as e:
        fail(str(e))
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
        tests = load_yaml(ROOT / ALERTS_TEST) or {}
    except (YamlError, OSError) as e:
        fail(str(e))
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
    """TYPE of each family, and the label sets of each sample name."""
    types: dict[str, str] = {}
    samples: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
            if m:
                types[m.group(1)] = m.group(2)
            continue
        m = re.match(r"([A-Za-z_:][\w:]*)(\{(.*)\})?\s+\S+", line)
        if not m:
            continue
        labels = tuple(sorted((k, v) for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or "")))
        samples.setdefault(m.group(1), set()).add(labels)
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
    types, samples = parse_scrape(text)
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
