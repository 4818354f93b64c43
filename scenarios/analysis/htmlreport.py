"""``report.html``: one self-contained page per run and per merged sweep, made from the stored files.

    python -m scenarios.analysis.htmlreport results/<scenario>/<run-id>   (make report RUN=... writes it too)

Everything is in the file: the plots as base64 PNG, the style and the script inline, and a
Content-Security-Policy that lets the page load nothing else, so opening it makes no request.
A run's page: its metadata (commit, kernel, machine, scenario), the headline table with 95%
intervals, the re-authentication / CXTP ratios, the fidelity verdict, the signalling, the median
timeline ladder per method, the interruption plots, every handover (sortable, filterable), and
links to the captures when the run has them. A sweep's page (``python -m scenarios.sweep merge``):
its points and their state, the figures against each swept parameter, and every point's figures.

Every number taken from ``summary.json`` (or ``per_handover.json``) is printed in an element that
names where it came from (``data-src``, a JSON pointer in ``data-path``, its format in
``data-fmt``), so a test can check the page against the files.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from scenarios.analysis import metrics, report, targets
from scenarios.runner import properties

DIRECTIONS = report.DIRECTIONS
NAME = "report.html"
#: nothing but this file, its inline style and script, and its data: URLs
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
:root { --fg: #1d2329; --muted: #5c6670; --line: #d5dbe1; --bad: #b3261e; --good: #1e6b34; --band: #f4f6f8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0; }
header { padding: 16px 24px 10px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 20px; }
header .verdict { font-size: 15px; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: 6px 24px;
      z-index: 2; font-size: 13px; }
nav a { margin-right: 14px; color: #1a5fb4; text-decoration: none; }
main { padding: 4px 24px 40px; max-width: 1500px; }
section { margin-top: 22px; overflow-x: auto; }
h2 { font-size: 17px; border-bottom: 1px solid var(--line); padding-bottom: 3px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top;
         white-space: nowrap; }
td.wrap { white-space: normal; min-width: 18em; }
th { background: var(--band); font-weight: 600; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
tbody tr:hover { background: #eef4fb; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 6px 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
.ok { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
.box { border: 1px solid var(--line); border-left: 4px solid var(--good); padding: 6px 12px; margin: 8px 0;
       background: #fbfcfd; }
.box.warn { border-left-color: var(--bad); }
figure { margin: 10px 0; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
.controls { margin: 6px 0; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.controls input[type=search] { width: 260px; padding: 3px 6px; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid var(--line); }
.scroll table { margin: 0; }
.scroll th { position: sticky; top: 0; }
pre { background: var(--band); padding: 8px; overflow: auto; font-size: 12px; }
"""

# Sorting by a click on a column's header (numbers by data-sort, else text), filtering by text
# and by the controls' selects and check boxes, a count of the rows shown.
SCRIPT = """
"use strict";
function cellKey(row, index) {
  const cell = row.cells[index];
  if (!cell) return "";
  const key = cell.getAttribute("data-sort");
  if (key !== null && key !== "") return parseFloat(key);
  return cell.textContent.trim();
}
function sortBy(table, index, header) {
  const body = table.tBodies[0];
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellKey(a, index), y = cellKey(b, index);
    let order;
    if (typeof x === "number" && typeof y === "number") order = x - y;
    else if (typeof x === "number") order = -1;
    else if (typeof y === "number") order = 1;
    else order = String(x).localeCompare(String(y), undefined, {numeric: true});
    return ascending ? order : -order;
  });
  for (const row of rows) body.appendChild(row);
}
function applyFilters(table) {
  const controls = document.querySelectorAll('[data-filter-for="' + table.id + '"]');
  let shown = 0;
  for (const row of table.tBodies[0].rows) {
    let visible = true;
    for (const control of controls) {
      const kind = control.getAttribute("data-filter");
      if (kind === "text") {
        const words = control.value.toLowerCase().split(/\\s+/).filter(Boolean);
        const text = row.textContent.toLowerCase();
        if (!words.every(word => text.includes(word))) visible = false;
      } else if (kind === "attribute") {
        const name = control.getAttribute("data-attribute");
        if (control.type === "checkbox") {
          if (control.checked && row.getAttribute(name) !== control.value) visible = false;
        } else if (control.value && row.getAttribute(name) !== control.value) visible = false;
      }
    }
    row.hidden = !visible;
    if (visible) shown += 1;
  }
  const counter = document.getElementById(table.id + "-count");
  if (counter) counter.textContent = shown + " of " + table.tBodies[0].rows.length + " rows";
}
document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach((header, index) => {
      header.title = "sort by " + header.textContent.trim();
      header.addEventListener("click", () => sortBy(table, index, header));
    });
  }
  for (const control of document.querySelectorAll("[data-filter-for]")) {
    const table = document.getElementById(control.getAttribute("data-filter-for"));
    const update = () => applyFilters(table);
    control.addEventListener("input", update);
    control.addEventListener("change", update);
    update();
  }
});
"""


# -- building blocks ------------------------------------------------------------------------------

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pointer(path: Iterable[Any]) -> str:
    """A JSON pointer (RFC 6901) to a value in a stored file."""
    return "/" + "/".join(str(part).replace("~", "~0").replace("/", "~1") for part in path)


def formatted(value: Any, fmt: str) -> str:
    """How the page prints a number: ``1`` one decimal, ``+1`` signed, ``2`` two, ``d`` integer."""
    if value is None:
        return "-"
    if fmt == "d":
        return str(int(round(value)))
    digits = int(fmt.lstrip("+"))
    return f"{value:+.{digits}f}" if fmt.startswith("+") else f"{value:.{digits}f}"


def number(value: Any, src: str, path: Sequence[Any], fmt: str = "1") -> str:
    """A number with where it came from; ``-`` (without provenance) where there is none."""
    if value is None or isinstance(value, bool):
        return "-"
    return (f'<span data-src="{esc(src)}" data-path="{esc(pointer(path))}" data-fmt="{fmt}">'
            f"{esc(formatted(value, fmt))}</span>")


def interval(values: Sequence[float] | None, src: str, path: Sequence[Any], fmt: str = "1") -> str:
    if not values:
        return "-"
    return f"[{number(values[0], src, [*path, 0], fmt)}, {number(values[1], src, [*path, 1], fmt)}]"


def cell(content: str, sort: Any = None, numeric: bool = True, wrap: bool = False) -> str:
    key = "" if sort is None or isinstance(sort, bool) else f' data-sort="{esc(sort)}"'
    kind = " class=n" if numeric else " class=wrap" if wrap else ""
    return f"<td{kind}{key}>{content}</td>"


def header_row(names: Iterable[str], numeric: Iterable[bool] | None = None) -> str:
    flags = list(numeric) if numeric is not None else None
    cells = "".join(f'<th{" class=n" if flags and flags[i] else ""}>{esc(name)}</th>' for i, name in enumerate(names))
    return f"<thead><tr>{cells}</tr></thead>"


def image(path: Path, caption: str, alt: str | None = None) -> str:
    if not path.is_file():
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(alt or caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{esc(caption)} <span class=muted>({esc(path.name)})</span></figcaption></figure>")


def meta_list(items: Iterable[tuple[str, Any]]) -> str:
    return "<dl class=meta>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items if v not in (None, "")) \
        + "</dl>"


def page(title: str, verdict: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: (anchor, heading, body) per section (its id ``s-<anchor>``, apart from
    the tables' ids), a navigation bar to them."""
    nav = "".join(f'<a href="#s-{esc(anchor)}">{esc(heading)}</a>' for anchor, heading, body in sections if body)
    body = "".join(f'<section id="s-{esc(anchor)}"><h2>{esc(heading)}</h2>{content}</section>'
                   for anchor, heading, content in sections if content)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{STYLE}</style>
<script>{SCRIPT}</script>
</head>
<body>
<header><h1>{esc(title)}</h1><div class=verdict>{verdict}</div></header>
<nav>{nav}</nav>
<main>{body}</main>
</body>
</html>
"""


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _filter_controls(table_id: str, selects: dict[str, list[str]], checks: Iterable[tuple[str, str, str]] = ()) -> str:
    """A text filter, one select per attribute (all values), check boxes (attribute, value, label)."""
    parts = [f'<input type=search placeholder="filter: words in the row" data-filter=text '
             f'data-filter-for="{table_id}" aria-label="filter rows">']
    for attribute, values in selects.items():
        options = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
        label = attribute.removeprefix("data-")
        parts.append(f'<label>{esc(label)} <select data-filter=attribute data-attribute="{esc(attribute)}" '
                     f'data-filter-for="{table_id}"><option value="">all</option>{options}</select></label>')
    for attribute, value, label in checks:
        parts.append(f'<label><input type=checkbox data-filter=attribute data-attribute="{esc(attribute)}" '
                     f'value="{esc(value)}" data-filter-for="{table_id}"> {esc(label)}</label>')
    parts.append(f'<span id="{table_id}-count" class=muted></span>')
    return "<div class=controls>" + "".join(parts) + "</div>"


# -- a run ----------------------------------------------------------------------------------------

def _metadata(run_dir: Path, record: dict[str, Any]) -> str:
    git = record.get("git") or {}
    environment = record.get("environment") or {}
    parameters = record.get("parameters") or {}
    packages = record.get("packages") or {}
    links = parameters.get("links") or {}
    link_rows = "".join(
        f"<tr><td>{esc(name)}</td>" + "".join(
            cell(esc(formatted(values.get(field), "1")) if values.get(field) is not None else "-")
            for field in ("delay_ms", "jitter_ms", "loss_percent", "rate_mbit")) + "</tr>"
        for name, values in links.items())
    sweep = parameters.get("sweep") or {}
    revision = git.get("revision")
    items = [
        ("run", esc(report.run_name(run_dir))),
        ("created (UTC)", esc(record.get("created_utc", "?"))),
        ("commit", esc(revision or "unknown") + (" <span class=bad>(uncommitted changes)</span>"
                                                 if git.get("dirty") else "")),
        ("kernel", esc(environment.get("verdict") or environment.get("kernel_release") or "?")),
        ("machine", esc(f"{environment.get('machine', '?')}, {environment.get('cpus', '?')} CPU(s) seen by the run"
                        + (", in the UML guest" if environment.get("in_uml_guest") else ""))),
        ("wall time", esc(f"{record['wall_time_s']} s") if "wall_time_s" in record else None),
        ("scenario", esc(f"{parameters.get('name', '?')} ({parameters.get('source', '?')})")),
        ("methods", esc(", ".join(parameters.get("methods") or []))),
        ("handovers", esc(f"{parameters.get('handovers')} per method (and swept value), after "
                          f"{parameters.get('warmup_handovers')} warm-up")),
        ("seed", esc(parameters.get("seed", record.get("seed")))),
        ("L2 handover", esc(f"{parameters.get('l2_delay_ms')} ms; anticipation {parameters.get('anticipation_ms')} ms;"
                            f" settle {parameters.get('settle_ms')} ms")),
        ("ESP profile, AR transport", esc(f"{parameters.get('profile')}, {parameters.get('ar_transport')}")),
        ("probes", esc(f"{(parameters.get('probe') or {}).get('rate')} /s each way, "
                       f"{(parameters.get('probe') or {}).get('size')} octets")),
        ("in-run sweep", esc(f"{sweep.get('parameter')} over {sweep.get('values')} for {sweep.get('methods')}")
         if sweep.get("parameter") else esc("none")),
        ("captures", esc(", ".join(parameters.get("captures") or []) or "none")),
        ("packages", esc(", ".join(f"{k} {v}" for k, v in packages.items() if v))),
    ]
    links_table = ("<table>" + header_row(["link class", "delay ms", "jitter ms", "loss %", "rate Mbit/s"],
                                          [False, True, True, True, True])
                   + f"<tbody>{link_rows}</tbody></table>") if link_rows else ""
    full = f"<details><summary>every parameter (record.json)</summary><pre>{esc(json.dumps(parameters, indent=2))}" \
           f"</pre></details>"
    return meta_list(items) + links_table + full


def headline(summary: dict[str, Any], src: str = "summary", base: Sequence[Any] = ()) -> str:
    """The run's table: per method and direction, the interruption with its interval, and the
    overhead over ``none`` (median and mean) with theirs."""
    rows = []
    for key, entry in summary["per_method"].items():
        for direction, label in DIRECTIONS:
            path = [*base, "per_method", key, direction]
            stats = entry[direction]["interruption_ms"]
            lost = entry[direction].get("lost") or {}
            overhead = entry[direction].get("overhead_ms") or {}
            n = stats.get("n", 0)
            rows.append(
                f'<tr data-method="{esc(entry.get("method", key))}">'
                + cell(esc(key), sort=None, numeric=False) + cell(esc(label), numeric=False)
                + cell(number(stats.get("median") if n else None, src, [*path, "interruption_ms", "median"]),
                       stats.get("median") if n else None)
                + cell(interval(stats.get("ci95"), src, [*path, "interruption_ms", "ci95"]))
                + cell(number(stats.get("p95") if n else None, src, [*path, "interruption_ms", "p95"]),
                       stats.get("p95") if n else None)
                + cell(number(stats.get("max") if n else None, src, [*path, "interruption_ms", "max"]),
                       stats.get("max") if n else None)
                + cell(number(n, src, [*path, "interruption_ms", "n"], "d"), n)
                + cell(number(lost.get("median") if lost.get("n") else None, src, [*path, "lost", "median"], "d"),
                       lost.get("median"))
                + cell(number(overhead.get("median"), src, [*path, "overhead_ms", "median"], "+1"),
                       overhead.get("median"))
                + cell(interval(overhead.get("ci95"), src, [*path, "overhead_ms", "ci95"]))
                + cell(number(overhead.get("mean"), src, [*path, "overhead_ms", "mean"], "+1"), overhead.get("mean"))
                + cell(interval(overhead.get("mean_ci95"), src, [*path, "overhead_ms", "mean_ci95"]))
                + "</tr>")
    names = ["method", "dir", "median", "95% interval", "p95", "max", "n", "lost", "overhead", "95% interval",
             "overhead (mean)", "95% interval"]
    return ("<p class=muted>Interruption at the receiver (ms), from the last in-order probe before the detach "
            "to the first probe through the new path: median with its 95% bootstrap interval; n handovers that "
            f"count; lost probes (median); overhead: the method's median (and mean) minus {report.REFERENCE}'s "
            "from the same run, with 95% intervals. Click a column to sort.</p>"
            f'<table id=headline class=sortable>{header_row(names, [False, False] + [True] * 10)}'
            f"<tbody>{''.join(rows)}</tbody></table>")


def ratios(summary: dict[str, Any], src: str = "summary", base: Sequence[Any] = ()) -> str:
    rows = []
    for index, row in enumerate(summary.get("ratios") or []):
        at = f"@{row['sweep_value']:g}" if row.get("sweep_value") is not None else ""
        path = [*base, "ratios", index]
        cells = "".join(cell(number(row.get(d), src, [*path, d], "2"), row.get(d))
                        + cell(interval(row.get(d + "_ci95"), src, [*path, d + "_ci95"], "2")) for d, _ in DIRECTIONS)
        rows.append(f"<tr>{cell(esc(row['baseline'] + at), numeric=False)}{cell(esc(row['method']), numeric=False)}"
                    f"{cells}</tr>")
    if not rows:
        return ""
    names = ["re-authentication", "CXTP method"] + [f"{label} {what}" for _, label in DIRECTIONS
                                                    for what in ("ratio", "95% interval")]
    return ("<p class=muted>Re-authentication's median interruption divided by each CXTP method's, from this run, "
            "with 95% intervals.</p>"
            f"<table id=ratios class=sortable>{header_row(names, [False, False, True, True, True, True])}"
            f"<tbody>{''.join(rows)}</tbody></table>")


def fidelity_verdict(summary: dict[str, Any], src: str = "summary") -> str:
    fidelity = summary.get("fidelity") or {}
    counted = sum(entry.get("handovers", 0) for entry in summary["per_method"].values())
    violations = fidelity.get("violations", 0)
    share = violations / (counted + violations) if counted + violations else None
    kept = share is not None and share <= targets.MAX_VIOLATION_SHARE
    failed = {key: entry for key, entry in summary["per_method"].items() if entry.get("failed_handovers")}
    verdict = ("<span class=ok>the emulation kept its timing</span>" if kept else
               "<span class=bad>the emulation did not keep its timing</span>" if share is not None else
               "<span class=muted>no measured handovers</span>")
    tolerances = fidelity.get("tolerances") or {}
    lines = [
        f"<div class='box{'' if kept else ' warn'}'><b>Fidelity verdict:</b> {verdict}: "
        f"{number(violations, src, ['fidelity', 'violations'], 'd')} measured handovers outside the tolerances "
        f"(left out of the figures), {number(fidelity.get('repeated', 0), src, ['fidelity', 'repeated'], 'd')} "
        "repeated"
        + (f"; {share:.1%} of the measured handovers, the target is at most "
           f"{targets.MAX_VIOLATION_SHARE:.0%}" if share is not None else "") + ".</div>",
        "<p>Tolerances: " + esc(", ".join(f"{k} {v}" for k, v in tolerances.items())) + "</p>",
    ]
    per_method = [(key, entry["fidelity_violations"]) for key, entry in summary["per_method"].items()
                  if entry.get("fidelity_violations")]
    if per_method:
        lines.append("<p>Outside the tolerances, per method: "
                     + esc(", ".join(f"{key} {count}" for key, count in per_method)) + "</p>")
    if failed:
        lines.append("<div class='box warn'><b>Failed handovers</b> (left out of the figures): " + esc("; ".join(
            f"{key} {entry['failed_handovers']} of {entry['handovers']} (restored by "
            + ", ".join(f"{how} {count}" for how, count in entry["restored_by"].items()) + ")"
            for key, entry in failed.items())) + "</div>")
    else:
        lines.append("<p class=ok>No handover failed.</p>")
    errors = {node: {k: v for k, v in delta.items() if "Error" in k or "No" in k}
              for node, delta in (summary.get("xfrm_stat_delta") or {}).items()}
    errors = {node: delta for node, delta in errors.items() if delta}
    lines.append("<p>Kernel IPsec error counters during the run (/proc/net/xfrm_stat deltas): "
                 + esc(json.dumps(errors) if errors else "all zero") + "</p>")
    return "".join(lines)


SIGNALLING = (("ctar_to_ctaa_ms", "CTAR->CTAA"), ("ctd_to_ctdr_ms", "(P)CTD->CTDR"), ("ike_to_child_ms", "IKE"),
              ("bu_to_ba_ms", "BU->BA"))
LINKS = ("access", "ar_ar", "ike", "radius", "mobility")


def signalling(summary: dict[str, Any]) -> str:
    rows = []
    for key, entry in summary["per_method"].items():
        sig = entry.get("signalling_ms") or {}
        per_link = entry.get("signalling_per_link") or {}
        cells = "".join(cell(number(sig.get(name, {}).get("median") if sig.get(name, {}).get("n") else None,
                                    "summary", ["per_method", key, "signalling_ms", name, "median"]),
                             sig.get(name, {}).get("median")) for name, _ in SIGNALLING)
        for link in LINKS:
            figures = per_link.get(link) or {}
            messages = (figures.get("messages") or {}).get("median")
            octets = (figures.get("bytes") or {}).get("median")
            cells += cell(f"{number(messages, 'summary', ['per_method', key, 'signalling_per_link', link, 'messages', 'median'], 'd')}"  # noqa: E501
                          f" / {number(octets, 'summary', ['per_method', key, 'signalling_per_link', link, 'bytes', 'median'], 'd')}"  # noqa: E501
                          if messages else "-", messages)
        tables = f"{entry['tables_ok']}/{entry['tables_checked']}" if "tables_checked" in entry else "-"
        rows.append(f"<tr>{cell(esc(key), numeric=False)}{cells}{cell(esc(tables))}</tr>")
    names = ["method", *(label for _, label in SIGNALLING), *(f"{link} msgs / octets" for link in LINKS),
             "Tables I-IV"]
    return ("<p class=muted>Signalling (ms, median): CTAR->CTAA at the MN, (P)CTD->CTDR at the pAR, IKE initiation "
            "to CHILD_SA installed, BU->BA at the MN; messages and octets per handover and link (medians); the "
            "Tables I-IV checks passed.</p>"
            f"<table id=signalling class=sortable>{header_row(names, [False] + [True] * (len(names) - 1))}"
            f"<tbody>{''.join(rows)}</tbody></table>")


def timelines(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    parts = [image(run_dir / "timeline_by_method.png", "Each method's median handover as a ladder diagram: "
                   "ms from the detach, down; grey: the L2 handover (detached).")]
    medians = report.median_timelines(rows) if rows else {}
    if medians:
        steps = sorted({step for method in medians.values() for step in method},
                       key=lambda step: min(m.get(step, float("inf")) for m in medians.values()))
        body = "".join(f"<tr>{cell(esc(step), numeric=False)}"
                       + "".join(cell(esc(f"{medians[m][step]:.1f}") if step in medians[m] else "-",
                                      medians[m].get(step)) for m in medians) + "</tr>" for step in steps)
        parts.append("<details><summary>the median timelines as a table (ms from the detach)</summary>"
                     f"<table id=timelines class=sortable>{header_row(['step', *medians], [False] + [True] * len(medians))}"  # noqa: E501
                     f"<tbody>{body}</tbody></table></details>")
    return "".join(part for part in parts if part)


def plots(run_dir: Path) -> str:
    parts = [image(run_dir / "interruption_by_method.png", "The interruption per method and direction: box plots "
                   "with each handover as a dot.")]
    for path in sorted(run_dir.glob("interruption_vs_*.png")):
        parts.append(image(path, "The median interruption against the in-run sweep's parameter."))
    parts.append(image(run_dir / "packets_by_method.png", "The packets of each method's median handover, "
                       "from the captures."))
    return "".join(parts)


def _failures(run_dir: Path) -> dict[Any, str]:
    """Each failed or recovered handover's reason, from ``handovers.json``, by index."""
    raw = _read(run_dir / "handovers.json") or []
    reasons: dict[Any, str] = {}
    for handover in raw if isinstance(raw, list) else []:
        failure = handover.get("failure") or {}
        reason = failure.get("reason") or handover.get("transfer_failure")
        if reason and "index" in handover:
            reasons[handover["index"]] = reason
    return reasons


def handovers(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class=muted>No per-handover figures (per_handover.json) in this run.</p>"
    reasons = _failures(run_dir)
    body = []
    for position, row in enumerate(rows):
        fidelity = row.get("fidelity") or {}
        violations = "; ".join(fidelity.get("violations") or [])
        sig = row.get("signalling") or {}
        outcome = row.get("outcome", "?")
        warmup = "yes" if row.get("warmup") else "no"
        counts = "yes" if metrics.counts(row) else "no"
        cells = [cell(number(row.get("index"), "per_handover", [position, "index"], "d"), row.get("index")),
                 cell(esc(row.get("method")), numeric=False),
                 cell(esc("" if row.get("sweep_value") is None else f"{row['sweep_value']:g}"), row.get("sweep_value")),
                 cell(esc(f"{row.get('from')}->{row.get('to')}"), numeric=False),
                 cell(esc(warmup), numeric=False),
                 cell(f'<span class="{"ok" if outcome == "ok" else "bad"}">{esc(outcome)}</span>', numeric=False)]
        for direction, _ in DIRECTIONS:
            figures = row.get(direction) or {}
            value = figures.get("interruption_ms")
            cells.append(cell(number(value, "per_handover", [position, direction, "interruption_ms"]), value))
            cells.append(cell(number(figures.get("lost"), "per_handover", [position, direction, "lost"], "d"),
                              figures.get("lost")))
        for name in ("ctar_to_ctaa_ms", "bu_to_ba_ms", "ike_to_child_ms"):
            cells.append(cell(number(sig.get(name), "per_handover", [position, "signalling", name]), sig.get(name)))
        cells.append(cell(esc(counts), numeric=False))
        cells.append(cell(f'<span class="{"" if not violations else "bad"}">{esc(violations or "within")}</span>',
                          numeric=False, wrap=bool(violations)))
        cells.append(cell(esc(reasons.get(row.get("index"), row.get("restored_by") or "")), numeric=False,
                          wrap=row.get("index") in reasons))
        body.append(f'<tr data-method="{esc(row.get("method"))}" data-outcome="{esc(outcome)}" '
                    f'data-counts="{counts}" data-warmup="{warmup}">{"".join(cells)}</tr>')
    methods = list(dict.fromkeys(str(row.get("method")) for row in rows))
    outcomes = list(dict.fromkeys(str(row.get("outcome")) for row in rows))
    names = ["#", "method", "swept", "move", "warm-up", "outcome", "HA->MN ms", "lost", "MN->HA ms", "lost",
             "CTAR->CTAA", "BU->BA", "IKE", "counts", "fidelity", "restored by / reason"]
    numeric = [True, False, True, False, False, False, True, True, True, True, True, True, True, False, False, False]
    return ("<p class=muted>Every handover of the run (per_handover.json): interruption (ms) and lost probes per "
            "direction, signalling (ms); <i>counts</i>: measured, succeeded and within the fidelity tolerances, "
            "so in the figures. Click a column to sort; filter by words, method and outcome.</p>"
            + _filter_controls("handovers", {"data-method": methods, "data-outcome": outcomes},
                               [("data-counts", "yes", "only those that count")])
            + f"<div class=scroll><table id=handovers class=sortable>{header_row(names, numeric)}"
              f"<tbody>{''.join(body)}</tbody></table></div>")


def captures(run_dir: Path) -> str:
    directory = run_dir / "captures"
    if not directory.is_dir():
        return ""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    items = "".join(f'<li><a href="{esc(p.relative_to(run_dir).as_posix())}">{esc(p.relative_to(run_dir))}</a> '
                    f"<span class=muted>({p.stat().st_size} octets)</span></li>" for p in files)
    profile = run_dir / "wireshark"
    extra = ('<p>The Wireshark profile that decrypts this run\'s ESP: <a href="wireshark/">wireshark/</a> '
             "(docs/wireshark.md).</p>") if profile.is_dir() else ""
    return f"<p>Packet captures of this run (pcapng), beside this file:</p><ul>{items}</ul>{extra}"


def files(directory: Path) -> str:
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != NAME)
    return ("<p>The files this page was made from, beside it:</p><ul>"
            + "".join(f'<li><a href="{esc(name)}">{esc(name)}</a></li>' for name in names) + "</ul>")


def tcp(summary: dict[str, Any]) -> str:
    """The TCP connection from the MN's home address, per method and direction."""
    rows = []
    for key, entry in summary["per_method"].items():
        figures = entry.get("tcp")
        if not figures:
            continue
        for direction, label in report.DIRECTIONS:
            cells = ""
            for name in ("recovery_ms", "stall_ms"):
                stats = figures[direction][name]
                for statistic in ("median", "p95"):
                    value = stats.get(statistic) if stats.get("n") else None
                    cells += cell(number(value, "summary", ["per_method", key, "tcp", direction, name, statistic]),
                                  value)
            rows.append(f"<tr>{cell(esc(key), numeric=False)}{cell(esc(label), numeric=False)}{cells}</tr>")
    if not rows:
        return "<p class=muted>No TCP connection in this run.</p>"
    names = ["method", "direction", "recovery median", "recovery p95", "stall median", "stall p95"]
    return ("<p class=muted>TCP from the MN's home address (ms): recovery = the attach to the first new data; stall "
            "= the last data before the detach to the first after it. Both include the sender's retransmission "
            "timer; resolution: one record interval.</p>"
            f"<table id=tcp class=sortable>{header_row(names, [False, False, True, True, True, True])}"
            f"<tbody>{''.join(rows)}</tbody></table>")


def choices(summary: dict[str, Any]) -> str:
    """The table an operator chooses a method from (report.choices), each property citing its test."""
    rows = []
    for row in report.choices(summary["per_method"]):
        cells = cell(esc(row["group"]), numeric=False)
        for direction, _ in report.DIRECTIONS:
            figure = row["overhead"][direction] or {}
            cells += cell(number(figure.get("median"), "summary", ["per_method", row["group"], direction,
                                                                   "overhead_ms", "median"]), figure.get("median"))
            cells += cell(interval(figure.get("ci95"), "summary", ["per_method", row["group"], direction,
                                                                   "overhead_ms", "ci95"]))
        for link in ("access", "ar_ar", "aaa"):
            messages, octets = row[link]
            cells += cell(f"{messages:.0f} / {octets:.0f}" if messages else "-", messages)
        cells += cell(f"{row['aaa_transactions']:.1f}", row["aaa_transactions"])
        declared = row["properties"]
        if declared is None:
            cells += cell("-", numeric=False) * 5
        else:
            evidence = esc(declared["evidence"])
            for value in (declared["fresh_keys"], declared["forward_secrecy"]):
                cells += f"<td title='{evidence}'>{'yes' if value else 'no'}</td>"
            for value in (declared["protects"], declared["state_at"], declared["keys_from"]):
                cells += f"<td title='{evidence}'>{esc(value)}</td>"
        rows.append(f"<tr>{cells}</tr>")
    names = ["method", "HA->MN overhead", "95% interval", "MN->HA overhead", "95% interval", "access msgs / octets",
             "AR-AR msgs / octets", "AAA msgs / octets", "AAA transactions", "fresh keys", "forward secrecy",
             "protects", "state at", "keys from"]
    return ("<p class=muted>What each method costs and gives: the overhead over the method without security (ms, "
            "median and 95% interval), messages and octets per handover, AAA transactions (RADIUS round trips), "
            f"and its security properties, each checked in the kernel by {esc(properties.EVIDENCE)}[method] (hover "
            "a cell).</p>"
            f"<table id=choices class=sortable>{header_row(names, [False] + [True] * 8 + [False] * 5)}"
            f"<tbody>{''.join(rows)}</tbody></table>")


def render_run(run_dir: Path) -> str:
    summary = _read(run_dir / "summary.json")
    if summary is None:
        raise report.ReportError(f"{run_dir}: no summary.json (make report RUN={run_dir} computes it)")
    record = _read(run_dir / "record.json") or {}
    rows = _read(run_dir / "per_handover.json") or []
    measured = [row for row in rows if not row.get("warmup")]
    failed = sum(1 for row in rows if row.get("outcome") == "failed")
    verdict = (f"{len(rows)} handovers ({len(measured)} measured), "
               + (f"<span class=bad>{failed} failed</span>" if failed else "<span class=ok>none failed</span>")
               + f"; commit {esc(((record.get('git') or {}).get('revision') or '?')[:12])}"
               + f"; {esc((record.get('environment') or {}).get('verdict') or '')}")
    sections = [
        ("metadata", "Run", _metadata(run_dir, record)),
        ("figures", "Interruption and overhead", headline(summary)),
        ("ratios", "Re-authentication / CXTP", ratios(summary)),
        ("fidelity", "Fidelity", fidelity_verdict(summary)),
        ("signalling", "Signalling", signalling(summary)),
        ("tcp", "TCP from the home address", tcp(summary)),
        ("choices", "Choosing a method", choices(summary)),
        ("timelines", "Timeline ladder", timelines(run_dir, rows)),
        ("plots", "Interruption plots", plots(run_dir)),
        ("handovers", "Every handover", handovers(run_dir, rows)),
        ("captures", "Captures", captures(run_dir)),
        ("files", "Files", files(run_dir)),
    ]
    return page(f"Run {report.run_name(run_dir)}", verdict, sections)


def write(run_dir: Path) -> Path:
    """Write ``report.html`` into a reported run directory; return its path."""
    path = run_dir / NAME
    path.write_text(render_run(run_dir))
    return path


# -- a merged sweep --------------------------------------------------------------------------------

def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{name} = {value:g}" if isinstance(value, float) else f"{name} = {value}"
                     for name, value in values.items())


def sweep_points(summary: dict[str, Any]) -> str:
    rows = []
    for position, point in enumerate(summary["points"]):
        state = point["state"]
        status = point.get("status") or {}
        link = (f'<a href="{esc(point["report"])}">report</a>' if point.get("report") else
                f'<a href="{esc(point["run"])}/">run</a>' if point.get("run") else "")
        logs = " ".join(f'<a href="{esc(log)}">{esc(Path(log).name)}</a>' for log in point.get("logs") or [])
        rows.append(
            f'<tr data-state="{esc(state)}">'
            + cell(number(point["index"], "summary", ["points", position, "index"], "d"), point["index"])
            + "".join(cell(esc(point["values"].get(d["name"])), point["values"].get(d["name"])
                           if isinstance(point["values"].get(d["name"]), (int, float)) else None)
                      for d in summary["sweep"]["parameters"])
            + cell(esc(point["seed"]), numeric=False)
            + cell(f'<span class="{"ok" if state == "ok" else "bad"}">{esc(state)}</span>', numeric=False)
            + cell(esc(point.get("reason") or ""), numeric=False, wrap=bool(point.get("reason")))
            + cell(number(status.get("wall_time_s"), "summary", ["points", position, "status", "wall_time_s"]),
                   status.get("wall_time_s"))
            + cell(esc(status.get("host") or ""), numeric=False)
            + cell(esc((status.get("slurm") or {}).get("job_id") or ""), numeric=False)
            + cell(f"{link} {logs}", numeric=False) + "</tr>")
    names = ["point", *(d["name"] for d in summary["sweep"]["parameters"]), "seed", "state", "why", "wall s", "host",
             "Slurm job", "links"]
    numeric = [True, *(True for _ in summary["sweep"]["parameters"]), False, False, False, True, False, False, False]
    problems = ""
    if summary["missing"] or summary["failed"]:
        problems = ("<div class='box warn'><b>Not every point ran cleanly.</b> "
                    + (f"Missing: points {esc(', '.join(map(str, summary['missing'])))}. "
                       if summary["missing"] else "")
                    + "".join(f"Point {esc(f['index'])} {esc(f['state'])}: {esc(f['reason'])}. "
                              for f in summary["failed"])
                    + "Rerun one with <code>make run-scenario SCENARIO=&lt;sweep&gt;/points/&lt;i&gt;.toml</code>, "
                      "then merge again.</div>")
    else:
        problems = "<div class=box>Every point ran, and every handover of every point succeeded.</div>"
    return (problems + _filter_controls("points", {"data-state": sorted({p["state"] for p in summary["points"]})})
            + f"<table id=points class=sortable>{header_row(names, numeric)}<tbody>{''.join(rows)}</tbody></table>")


def sweep_figures(summary: dict[str, Any]) -> str:
    rows = []
    for position, point in enumerate(summary["points"]):
        for key, entry in (point.get("per_method") or {}).items():
            for direction, label in DIRECTIONS:
                path = ["points", position, "per_method", key, direction]
                stats = entry[direction]["interruption_ms"]
                overhead = entry[direction].get("overhead_ms") or {}
                n = stats.get("n", 0)
                rows.append(
                    f'<tr data-method="{esc(key)}" data-direction="{esc(label)}">'
                    + cell(esc(key), numeric=False) + cell(esc(label), numeric=False)
                    + cell(number(point["index"], "summary", ["points", position, "index"], "d"), point["index"])
                    + cell(esc(_values_text(point["values"])), numeric=False)
                    + cell(number(stats.get("median") if n else None, "summary", [*path, "interruption_ms", "median"]),
                           stats.get("median") if n else None)
                    + cell(interval(stats.get("ci95"), "summary", [*path, "interruption_ms", "ci95"]))
                    + cell(number(n, "summary", [*path, "interruption_ms", "n"], "d"), n)
                    + cell(number(entry[direction].get("lost"), "summary", [*path, "lost"], "d"),
                           entry[direction].get("lost"))
                    + cell(number(overhead.get("median"), "summary", [*path, "overhead_ms", "median"], "+1"),
                           overhead.get("median"))
                    + cell(interval(overhead.get("ci95"), "summary", [*path, "overhead_ms", "ci95"]))
                    + "</tr>")
    if not rows:
        return "<p class=bad>No point has figures yet.</p>"
    methods = list(dict.fromkeys(key for p in summary["points"] for key in p.get("per_method") or {}))
    names = ["method", "dir", "point", "values", "median", "95% interval", "n", "lost", "overhead", "95% interval"]
    return ("<p class=muted>Per method, direction and point: the median interruption (ms) with its 95% bootstrap "
            "interval, and the overhead over none at the same point with its interval.</p>"
            + _filter_controls("sweepfigures", {"data-method": methods,
                                                "data-direction": [label for _, label in DIRECTIONS]})
            + f"<div class=scroll><table id=sweepfigures class=sortable>"
              f"{header_row(names, [False, False, True, False, True, True, True, True, True, True])}"
              f"<tbody>{''.join(rows)}</tbody></table></div>")


def sweep_ratios(summary: dict[str, Any]) -> str:
    rows = []
    for position, point in enumerate(summary["points"]):
        for index, row in enumerate(point.get("ratios") or []):
            path = ["points", position, "ratios", index]
            cells = "".join(cell(number(row.get(d), "summary", [*path, d], "2"), row.get(d))
                            + cell(interval(row.get(d + "_ci95"), "summary", [*path, d + "_ci95"], "2"))
                            for d, _ in DIRECTIONS)
            rows.append(f"<tr>{cell(esc(point['index']), point['index'])}{cell(esc(row['baseline']), numeric=False)}"
                        f"{cell(esc(row['method']), numeric=False)}{cells}</tr>")
    if not rows:
        return ""
    names = ["point", "re-authentication", "CXTP method", "HA->MN ratio", "95% interval", "MN->HA ratio",
             "95% interval"]
    return (f"<table id=sweepratios class=sortable>{header_row(names, [True, False, False, True, True, True, True])}"
            f"<tbody>{''.join(rows)}</tbody></table>")


def sweep_fidelity(summary: dict[str, Any]) -> str:
    rows = []
    for position, point in enumerate(summary["points"]):
        fidelity = point.get("fidelity") or {}
        counted = sum((entry.get("handovers") or 0) for entry in (point.get("per_method") or {}).values())
        violations = fidelity.get("violations")
        share = violations / (counted + violations) if violations is not None and counted + violations else None
        kept = share is not None and share <= targets.MAX_VIOLATION_SHARE
        verdict = ("-" if share is None else
                   f'<span class="{"ok" if kept else "bad"}">{"kept" if kept else "not kept"} ({share:.1%})</span>')
        rows.append(f"<tr>{cell(esc(point['index']), point['index'])}"
                    f"{cell(number(violations, 'summary', ['points', position, 'fidelity', 'violations'], 'd'), violations)}"  # noqa: E501
                    f"{cell(number(fidelity.get('repeated'), 'summary', ['points', position, 'fidelity', 'repeated'], 'd'), fidelity.get('repeated'))}"  # noqa: E501
                    f"{cell(verdict, numeric=False)}{cell(esc(point.get('kernel') or ''), numeric=False)}</tr>")
    return ("<p class=muted>Per point: measured handovers outside the emulation's fidelity tolerances (left out of "
            f"its figures), those repeated, and the verdict (at most {targets.MAX_VIOLATION_SHARE:.0%} outside).</p>"
            f"<table id=sweepfidelity>{header_row(['point', 'outside', 'repeated', 'timing', 'kernel'], [True, True, True, False, False])}"  # noqa: E501
            f"<tbody>{''.join(rows)}</tbody></table>")


def _sweep_metadata(summary: dict[str, Any]) -> str:
    sweep = summary["sweep"]
    git = sweep.get("git") or {}
    wall = summary.get("wall") or {}
    slurm = summary.get("slurm") or {}
    items = [
        ("sweep", esc(sweep["name"])),
        ("planned (UTC)", esc(sweep.get("created_utc"))),
        ("merged (UTC)", esc(summary.get("merged_utc"))),
        ("scenario", esc(sweep.get("source"))),
        ("commit", esc(git.get("revision") or "unknown") + (" <span class=bad>(uncommitted changes)</span>"
                                                            if git.get("dirty") else "")),
        ("methods", esc(", ".join(sweep.get("methods") or []))),
        ("parameters", "<br>".join(esc(f"{d['name']}: {d['values']}") for d in sweep["parameters"])),
        ("points", esc(f"{len(summary['points'])} (seeds derived from the sweep's seed {sweep.get('seed')})")),
        ("wall time", esc(", ".join(part for part in (
            f"{wall['sum_s']} s over the points" if wall.get("sum_s") is not None else "",
            f"{wall['span_s']} s from the first start to the last end" if "span_s" in wall else "",
            f"{wall['from_submission_s']} s from the Slurm submission" if "from_submission_s" in wall else "")
            if part))),
        ("Slurm", esc(f"job {slurm.get('job_id')} submitted {slurm.get('submitted_utc')}") if slurm.get("job_id")
         else None),
    ]
    return meta_list(items)


def render_sweep(directory: Path) -> str:
    summary = _read(directory / "summary.json")
    if summary is None:
        raise report.ReportError(f"{directory}: no summary.json (python -m scenarios.sweep merge {directory})")
    ok = sum(1 for point in summary["points"] if point["state"] == "ok")
    verdict = (f"{len(summary['points'])} points: {ok} ok"
               + (f", <span class=bad>{len(summary['missing'])} missing</span>" if summary["missing"] else "")
               + (f", <span class=bad>{len(summary['failed'])} failed or with failed handovers</span>"
                  if summary["failed"] else ""))
    figures = "".join(image(directory / name, f"Each figure against {name.removeprefix('sweep_vs_')[:-4]}, "
                                              "per method (and other parameter values), with 95% intervals.")
                      for name in summary.get("plots") or [])
    sections = [
        ("metadata", "Sweep", _sweep_metadata(summary)),
        ("points", "Points", sweep_points(summary)),
        ("plots", "Figures against the swept parameters", figures),
        ("figures", "Every point's figures", sweep_figures(summary)),
        ("ratios", "Re-authentication / CXTP per point", sweep_ratios(summary)),
        ("fidelity", "Fidelity per point", sweep_fidelity(summary)),
        ("files", "Files", files(directory)),
    ]
    return page(f"Sweep {summary['sweep']['name']}", verdict, sections)


def write_sweep(directory: Path) -> Path:
    path = directory / NAME
    path.write_text(render_sweep(directory))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="a reported run (results/<scenario>/<run-id>) or a merged sweep")
    arguments = parser.parse_args(argv)
    directory = Path(arguments.directory)
    try:
        path = write_sweep(directory) if (directory / "sweep.json").is_file() else write(directory)
    except (report.ReportError, ValueError, KeyError, OSError) as error:
        print(f"report.html: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
