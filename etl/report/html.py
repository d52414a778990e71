"""The report page: plain data (:func:`etl.report.build_report`) in, one HTML document out.

Tables are HTML, charts inline SVG, all drawn here, so the page reads the same with scripts off;
the small inline script only filters the column profiles. Every text from the run (names, file
paths, values) is escaped.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from etl.report._assets import CSS, JS

#: Example values of a failing rule are shown up to this many characters.
VALUE_CHARS = 400
#: What an empty cell shows (an en dash).
NONE = "\u2013"
_NONE_CELL = f'<span class="dim">{NONE}</span>'


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _int(n: Any) -> str:
    return NONE if n is None else f"{int(n):,}"


def _bytes(n: Any) -> str:
    if n is None:
        return NONE
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"  # pragma: no cover


def _badge(text: Any, cls: str | None = None) -> str:
    return f'<span class="badge {_e(cls or text)}">{_e(text)}</span>'


def _th(*cols: str) -> str:
    cells = "".join(f'<th class="n">{_e(c[1:])}</th>' if c.startswith("#") else f"<th>{_e(c)}</th>"
                    for c in cols)
    return f"<thead><tr>{cells}</tr></thead>"


# ------------------------------------------------------------------------------ charts


def hist_svg(bars: Sequence[Mapping[str, Any]], *, of: str = "value", width: int = 150,
             height: int = 30) -> str:
    """A histogram as inline SVG: a bar per bin (or value), each with its label and count as a
    tooltip (``<title>``)."""
    if not bars:
        return _NONE_CELL
    top = max(int(b["count"]) for b in bars) or 1
    step = width / len(bars)
    gap = 1 if step > 3 else 0
    rects = []
    for i, b in enumerate(bars):
        count = int(b["count"])
        h = 0.0 if count == 0 else max(1.5, height * count / top)
        cls = ' class="empty"' if count == 0 else ""
        shown = max(h, 1.0)
        rects.append(f'<rect{cls} x="{i * step:.2f}" y="{height - shown:.2f}" '
                     f'width="{max(step - gap, 0.6):.2f}" height="{shown:.2f}">'
                     f'<title>{_e(b["label"])}: {count:,}</title></rect>')
    label = f"histogram of {'lengths' if of == 'length' else 'values'}, {len(bars)} bars"
    return (f'<svg class="hist" role="img" aria-label="{_e(label)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(rects)}</svg>')


def _split_svg(accepted: int | None, rejected: int | None, *, width: int = 120, height: int = 12) -> str:
    """Accepted against rejected rows of a level as one stacked bar."""
    if accepted is None or rejected is None or accepted + rejected == 0:
        return (f'<svg class="split" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
                f'<rect class="none" width="{width}" height="{height}"/></svg>')
    total = accepted + rejected
    bad = 0.0 if rejected == 0 else max(1.5, width * rejected / total)
    return (f'<svg class="split" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<rect class="accepted" width="{width - bad:.2f}" height="{height}">'
            f'<title>accepted: {accepted:,}</title></rect>'
            f'<rect class="rejected" x="{width - bad:.2f}" width="{bad:.2f}" height="{height}">'
            f'<title>rejected: {rejected:,}</title></rect></svg>')


def _bar_svg(share: float, cls: str, *, width: int = 80, height: int = 10, title: str = "") -> str:
    share = min(max(share, 0.0), 1.0)
    front = 0.0 if share == 0 else max(1.0, width * share)
    return (f'<svg class="{cls}" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<rect class="back" width="{width}" height="{height}"/>'
            f'<rect class="front" width="{front:.2f}" height="{height}">'
            f'<title>{_e(title)}</title></rect></svg>')


# ------------------------------------------------------------------------------ sections


def _header(data: Mapping[str, Any]) -> str:
    r = data["run"]
    v = data.get("validation") or {}
    parts = [f"<span>dataset <b>{_e(r['dataset'])}</b> version {_e(r['dataset_version'])}</span>",
             f"<span>{_int(r['files'])} source files, {_bytes(r['bytes'])}</span>",
             f"<span>staged {_e(r['created_at'])}</span>",
             f"<span>toolkit {_e(r['toolkit_version'])}</span>"]
    badges = _badge(r["state"])
    if v.get("status"):
        badges += " " + _badge(f"validation {v['status']}", v["status"])
    return (f'<header><h1 id="title">{_e(r["dataset"])} · {_e(r["id"])} {badges}</h1>'
            f'<div class="meta">{"".join(parts)}</div>'
            f'<div class="meta mono">{_e(r["path"])}</div>'
            '<nav><a href="#flow">row flow</a><a href="#phases">phases</a>'
            '<a href="#rules">failing rules</a><a href="#profiles">column profiles</a></nav></header>')


def _flow_section(data: Mapping[str, Any]) -> str:
    load = data.get("load")
    rows = []
    previous = None
    for f in data["flow"]:
        # a source's files and bytes once, on its first level
        first = f["source"] != previous
        previous = f["source"]
        source = _e(f["source"]) if first else ""
        files, size = (_int(f["files"]), _bytes(f["bytes"])) if first else ("", "")
        table = NONE
        if f["table"]:
            table = f"<code>{_e(f['table'])}</code>"
            if f["shared_with"]:
                table += f' <span class="dim">with {_e(", ".join(f["shared_with"]))}</span>'
        rej = f["rejected"]
        rej_cell = _int(rej) if rej is None or rej == 0 else f'<b style="color:var(--bad)">{_int(rej)}</b>'
        level = _e(f["level"]) + (f' <span class="dim">in {_e(f["parent"])}</span>' if f["parent"] else "")
        rows.append(
            f'<tr data-level="{_e(f["level"])}"><td>{source}</td><td class="n">{files}</td>'
            f'<td class="n">{size}</td><td>{level}</td><td class="n">{_int(f["staged"])}</td>'
            f'<td class="n">{rej_cell}</td><td class="n">{_int(f["accepted"])}</td>'
            f'<td>{_split_svg(f["accepted"], rej)}</td><td>{table}</td>'
            f'<td class="n">{_int(f["table_rows"])}</td><td class="n">{_int(f["loaded"])}</td></tr>')
    out = ['<section id="flow"><h2>Row flow</h2>',
           '<p class="dim">Per level: the source\'s files, the rows staged, rejected by error rules and '
           "accepted, and the rows of the level's table after the transform and in the database. A table "
           "fed by several levels shows its rows on each.</p>",
           '<table id="flow-table">',
           _th("source", "#files", "#bytes", "level", "#staged", "#rejected", "#accepted", "",
               "table", "#in tables", "#loaded"),
           f"<tbody>{''.join(rows)}</tbody></table>"]
    if data["tables"]:
        trs = []
        for t in data["tables"]:
            same = "" if t["loaded"] is None else (" ✓" if int(t["loaded"]) == t["rows"] else " ≠")
            trs.append(f'<tr data-table="{_e(t["table"])}"><td><code>{_e(t["table"])}</code></td>'
                       f'<td>{_e(", ".join(t["levels"])) or "<span class=dim>(nested lists)</span>"}</td>'
                       f'<td class="n">{_int(t["rows"])}</td>'
                       f'<td class="n">{_int(t["loaded"])}{same}</td></tr>')
        out += ['<table id="tables-table">', _th("table", "from levels", "#rows", "#loaded"),
                f"<tbody>{''.join(trs)}</tbody></table>"]
    if load is not None:
        out.append(f'<p class="note" id="load-info">Load: {_badge(load.get("status") or "?")} '
                   f'ledger #{_e(load.get("ledger_id"))}, mode {_e(load.get("mode"))}, '
                   f'{_e(load.get("database"))} (figures from {_e(load.get("source"))})'
                   + (f'<br>error: {_e(load["error"])}' if load.get("error") else "") + "</p>")
    elif data.get("load_note"):
        out.append(f'<p class="note" id="load-info">No load figures: '
                   f'{_e(data["load_note"])}</p>')
    if data["quarantined"]:
        items = "".join(f"<li><code>{_e(q.get('file') or q.get('path'))}</code>: "
                        f"{_e(q.get('reason') or q.get('error'))}</li>" for q in data["quarantined"])
        out.append(f'<details id="quarantined" open><summary>{len(data["quarantined"])} files quarantined '
                   f"(left out of the run)</summary><ul>{items}</ul></details>")
    dups = data.get("duplicate_keys") or {}
    if dups.get("records"):
        items = "".join(f"<li><code>{_e(d['file'])}</code> record {int(d['record'])}</li>"
                        for d in dups["examples"])
        out.append(f'<details id="duplicate-keys"><summary>{int(dups["records"])} record(s) hold a '
                   "key twice: the last value of each was kept</summary>"
                   f"<ul>{items}</ul></details>")
    out.append("</section>")
    return "".join(out)


def _phases_section(data: Mapping[str, Any]) -> str:
    phases = data["phases"]
    total = sum(p["seconds"] for p in phases)
    slowest = max((p["seconds"] for p in phases), default=0.0) or 1.0
    rows = []
    for p in phases:
        rate = p["rows"] / p["seconds"] if p["seconds"] > 0 else 0.0
        took = f"{p['seconds']:.3f} s"
        rows.append(f'<tr data-phase="{_e(p["name"])}"><td>{_e(p["name"])}</td>'
                    f'<td class="dim">{_e(p["of"])}</td>'
                    f'<td class="n">{p["seconds"]:.2f} s</td>'
                    f'<td>{_bar_svg(p["seconds"] / slowest, "share time", width=160, title=took)}</td>'
                    f'<td class="n">{_int(p["rows"])}</td><td class="n">{rate:,.0f}</td>'
                    f'<td class="n">{_bytes(p["peak_rss"])}</td></tr>')
    peak = max((p["peak_rss"] for p in phases), default=0)
    foot = (f'<tfoot><tr><th>total</th><th></th><th class="n">{total:.2f} s</th><th></th><th></th><th></th>'
            f'<th class="n">{_bytes(peak)}</th></tr></tfoot>') if phases else ""
    empty = "" if phases else '<p class="dim">No phase recorded.</p>'
    return ('<section id="phases"><h2>Time and peak memory per phase</h2>'
            '<p class="dim">Wall time of each phase and the peak resident memory of its process at its end '
            '(load steps from the load that made the figures).</p>'
            f'<table id="phase-table">{_th("phase", "of", "#time", "", "#rows", "#rows/s", "#peak RSS")}'
            f"<tbody>{''.join(rows)}</tbody>{foot}</table>{empty}</section>")


def _values(values: Any) -> str:
    text = json.dumps(values, ensure_ascii=False, default=str)
    if len(text) > VALUE_CHARS:
        text = text[:VALUE_CHARS] + "…"
    return _e(text)


def _rules_section(data: Mapping[str, Any]) -> str:
    v = data.get("validation")
    if v is None:
        return ('<section id="rules"><h2>Failing rules</h2><p id="failing-rules" class="note">'
                "Not validated yet: run <code>etl validate RUN</code>.</p></section>")
    over = ", ".join(v["failed_levels"])
    out = ['<section id="rules"><h2>Failing rules</h2>',
           f'<p class="dim">{len(data["rules"])} of {v["rules"]} rules failed; validation '
           f'{_badge(v["status"])}'
           + (f", levels over the reject ratio: {_e(over)}" if over else "")
           + ". Error rules reject their rows (kept in <code>rejects/&lt;level&gt;.parquet</code>); "
           "warnings only count.</p>", '<div id="failing-rules">']
    if not data["rules"]:
        out.append('<p class="note">No rule failed.</p>')
    for r in data["rules"]:
        examples = r.get("examples") or []
        trs = "".join(f'<tr><td class="mono">{_e(x.get("file"))}</td>'
                      f'<td class="n">{_int(x.get("record"))}</td><td class="mono">{_e(x.get("path"))}</td>'
                      f'<td class="mono values">{_values(x.get("values"))}</td></tr>' for x in examples)
        head = _th("source file", "#record", "path", "values")
        table = (f'<table class="examples">{head}<tbody>{trs}</tbody></table>'
                 if examples else '<p class="dim">No example rows kept.</p>')
        shown = f"{len(examples)} example{'s' if len(examples) != 1 else ''}"
        out.append(f'<details class="rule" data-rule="{_e(r.get("name"))}" open><summary>'
                   f'{_badge(r.get("severity"))} <h3><code>{_e(r.get("name"))}</code></h3> '
                   f'<b>{_int(r.get("failed"))}</b> rows · level {_e(r.get("level"))} · {shown}'
                   f'<div class="dim">{_e(r.get("description"))}</div></summary>{table}</details>')
    out.append("</div>")
    if data["cleaning"]:
        trs = "".join(f'<tr><td>{_e(c.get("name"))}</td><td>{_e(c.get("level"))}</td>'
                      f'<td>{_e(c.get("column"))}</td><td class="n">{_int(c.get("changed"))}</td>'
                      f'<td class="dim">{_e(c.get("description"))}</td></tr>' for c in data["cleaning"])
        out.append(f'<h3>Cleaning that changed values</h3><table id="cleaning-table">'
                   f'{_th("step", "level", "column", "#changed", "what")}<tbody>{trs}</tbody></table>')
    out.append("</section>")
    return "".join(out)


def _profiles_section(data: Mapping[str, Any]) -> str:
    prof = data["profiles"]
    of = prof["of"]
    what = "transformed tables" if of == "tables" else "staged levels"
    out = ['<section id="profiles"><h2>Column profiles</h2>',
           f'<p class="dim">Every column of the {what}: '
           "the share of nulls, distinct values, the smallest and largest value (of text: in sort order; "
           "of lists: their lengths) and a histogram (numbers: of the values; text with many values and "
           "lists: of the lengths; booleans and text with few values: a bar per value, most frequent first). "
           "Hover a bar for its range and count.</p>",
           '<div class="toolbar"><input id="profile-filter" type="search" placeholder="filter columns or '
           f'{"tables" if of == "tables" else "levels"}…" aria-label="filter columns">'
           '<span id="profile-count" class="dim"></span>'
           '<button id="profile-open" type="button">open all</button>'
           '<button id="profile-close" type="button">close all</button></div><div id="column-profiles">']
    for n, (name, target) in enumerate(prof["targets"].items()):
        rows = []
        for c in target["columns"]:
            share = c["null_share"]
            hist = c.get("histogram")
            chart = hist_svg(hist["bars"], of=hist["of"]) if hist else _NONE_CELL
            of_what = ' <span class="dim">lengths</span>' if hist and hist["of"] == "length" else ""
            nulls = f"{c['nulls']:,} nulls"
            rows.append(
                f'<tr class="column" data-column="{_e(c["name"])}"><td><code>{_e(c["name"])}</code></td>'
                f'<td class="dim">{_e(c["dtype"])}</td>'
                f'<td class="n">{share * 100:.1f}%</td><td>{_bar_svg(share, "share", title=nulls)}</td>'
                f'<td class="n">{_int(c["distinct"])}</td><td class="mono">{_e(c["min"])}</td>'
                f'<td class="mono">{_e(c["max"])}</td><td>{chart}{of_what}</td></tr>')
        opened = " open" if n == 0 else ""
        out.append(f'<details class="profile" data-target="{_e(name)}" id="profile-{_e(name)}"{opened}>'
                   f'<summary><h3><code>{_e(name)}</code></h3> {_int(target["rows"])} rows, '
                   f'{len(target["columns"])} columns</summary><table class="profile-table">'
                   f'{_th("column", "type", "#nulls", "", "#distinct", "min", "max", "histogram")}'
                   f"<tbody>{''.join(rows)}</tbody></table></details>")
    out.append("</div></section>")
    return "".join(out)


def render_html(data: Mapping[str, Any]) -> str:
    """The whole page for the report ``data``: self-contained (inline style, script and SVG)."""
    r = data["run"]
    title = f"{r['dataset']} {r['id']}: run report"
    body = "".join([_header(data), "<main>", _flow_section(data), _phases_section(data),
                    _rules_section(data), _profiles_section(data), "</main>"])
    seconds = data.get("seconds")
    foot = (f"<footer>Written by {_e(data['generated_by'])} at {_e(data['generated_at'])}"
            + (f" in {float(seconds):.2f} s" if isinstance(seconds, float) and math.isfinite(seconds) else "")
            + ". Self-contained: reads nothing from the network.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}{foot}"
            f"<script>{JS}</script></body></html>\n")
