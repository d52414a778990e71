"""The report page's inline style sheet and script (no network at view time: nothing is fetched)."""

CSS = """
:root { --fg: #1d2430; --muted: #5f6b7a; --line: #d9dee5; --bg: #fff; --soft: #f4f6f9;
        --ok: #2f855a; --warn: #b7791f; --bad: #c53030; --bar: #3b6fb6; --info: #4a5568; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header, main, footer { max-width: 1280px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 0; display: inline; }
.meta { color: var(--muted); }
.meta span + span::before { content: " · "; }
nav { margin: 10px 0 0; }
nav a { margin-right: 14px; color: var(--bar); text-decoration: none; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.dim, .dim { color: var(--muted); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; font-weight: 600;
         color: #fff; background: var(--info); }
.badge.ok, .badge.passed, .badge.loaded, .badge.succeeded { background: var(--ok); }
.badge.warning, .badge.warn, .badge.skipped, .badge.interrupted, .badge.running { background: var(--warn); }
.badge.error, .badge.failed, .badge.bad, .badge.abandoned { background: var(--bad); }
details { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0; padding: 6px 10px; }
details > summary { cursor: pointer; }
details[open] > summary { margin-bottom: 6px; }
.values { white-space: pre-wrap; word-break: break-all; max-width: 640px; }
.note { background: var(--soft); border-left: 3px solid var(--line); padding: 6px 10px; margin: 8px 0; }
svg.hist rect { fill: var(--bar); }
svg.hist rect.empty { fill: var(--line); }
svg.split rect.accepted { fill: var(--ok); }
svg.split rect.rejected { fill: var(--bad); }
svg.split rect.none { fill: var(--line); }
svg.share rect.back { fill: var(--soft); stroke: var(--line); }
svg.share rect.front { fill: var(--warn); }
svg.time rect.front { fill: var(--bar); }
.toolbar { display: flex; gap: 12px; align-items: center; margin: 8px 0; }
.toolbar input { padding: 4px 8px; border: 1px solid var(--line); border-radius: 4px; min-width: 260px; }
tr.hidden, details.hidden { display: none; }
footer { color: var(--muted); padding: 24px; font-size: 12px; }
"""

#: Filters the column profiles by name, keeps a count of what is shown, opens and closes them.
JS = """
(function () {
  "use strict";
  var input = document.getElementById("profile-filter");
  var count = document.getElementById("profile-count");
  var groups = Array.prototype.slice.call(document.querySelectorAll("details.profile"));
  var total = document.querySelectorAll("tr.column").length;
  function apply() {
    var q = (input.value || "").trim().toLowerCase();
    var shown = 0;
    groups.forEach(function (group) {
      var target = (group.getAttribute("data-target") || "").toLowerCase();
      var inGroup = 0;
      group.querySelectorAll("tr.column").forEach(function (row) {
        var name = (row.getAttribute("data-column") || "").toLowerCase();
        var hit = !q || name.indexOf(q) >= 0 || target.indexOf(q) >= 0;
        row.classList.toggle("hidden", !hit);
        if (hit) { inGroup += 1; }
      });
      group.classList.toggle("hidden", inGroup === 0);
      if (q && inGroup > 0) { group.open = true; }
      shown += inGroup;
    });
    count.textContent = shown + " of " + total + " columns";
    count.setAttribute("data-shown", String(shown));
  }
  function openAll(open) { groups.forEach(function (g) { g.open = open; }); }
  if (input && count) {
    input.addEventListener("input", apply);
    document.getElementById("profile-open").addEventListener("click", function () { openAll(true); });
    document.getElementById("profile-close").addEventListener("click", function () { openAll(false); });
    apply();
  }
  document.documentElement.setAttribute("data-ready", "1");
})();
"""
