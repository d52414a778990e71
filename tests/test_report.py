"""The run report page (etl report, etl run): built from a real staged run of the sample export,
opened in a real headless Chromium, and checked for what a reader needs to see."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from etl import Run, Settings, get_dataset
from etl.cli import main
from etl.config import RuleOverride
from etl.report import REPORT_HTML, build_report, render_html, write_report
from etl.report.profile import profile_all

#: A warning of the sample raised to an error, so the run has rejected rows: the archetype
#: whose DisplayName is empty (I12.json, Archetypes[51]).
RAISED = "archetypes.display_name.required"


def chromium() -> str:
    """The system's Chromium (Debian's package; `.ci/run` installs it)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium, as .ci/run does)")
    return exe


def open_in_chromium(page: Path, profile_dir: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and the browser console's messages. The network is
    shut (every host resolves to nothing, a dead proxy), so a page that needed it would log
    failed loads."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", f"--user-data-dir={profile_dir}", "--proxy-server=127.0.0.1:9",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


class Dom(HTMLParser):
    """What the tests look for in a page: element ids, the SVG histograms, texts by id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, str] = {}
        self._open: list[str | None] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.add(str(a["id"]))
            self.texts.setdefault(str(a["id"]), "")
        if tag not in ("rect", "br", "input", "meta", "path"):
            self._open.append(a.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("rect", "br", "input", "meta", "path") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for i in self._open:
            if i:
                self.texts[i] += data

    def count(self, tag: str, cls: str) -> int:
        return sum(1 for t, a in self.tags if t == tag and cls in (a.get("class") or "").split())


@pytest.fixture(scope="module")
def report_run(mids_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The sample staged, validated with one warning raised to an error (so a row is rejected)
    and transformed."""
    from etl.stage import stage
    from etl.transform import transform
    from etl.validate import require_passed, validate

    staging = tmp_path_factory.mktemp("report") / "staging"
    ds = get_dataset("mids")
    staged = stage(ds, [mids_sample], settings=Settings(staging_dir=staging))
    checked = validate(staged.run, ds, max_reject_ratio=0.5,
                       rules=(RuleOverride(RAISED, "error", "test"),))
    require_passed(checked)
    return transform(checked.run, ds).run


def test_page_renders_in_headless_chromium(report_run: Run, tmp_path: Path) -> None:
    """Opened in Chromium with the network shut, every part is there after the scripts ran:
    the row flow, the phases, the failing rules with their source file and record, and a
    profile with an SVG histogram per column; the console stays clean."""
    page = write_report(report_run, out=tmp_path / "report.html")
    dom_text, console = open_in_chromium(page, tmp_path / "chromium")
    assert not [m for m in console if "Uncaught" in m or "Failed to load" in m or "ERR_" in m], console
    dom = Dom(dom_text)

    assert {"flow-table", "tables-table", "phase-table", "failing-rules", "column-profiles",
            "profile-filter", "profile-count", "load-info"} <= dom.ids
    # the script ran: it marks the page ready and counts the columns it can filter
    assert ('html', {"lang": "en", "data-ready": "1"}) in dom.tags
    columns = sum(len(e["schema"]) for e in report_run.manifest["tables"].values())
    assert dom.texts["profile-count"] == f"{columns} of {columns} columns"
    assert dom.count("tr", "column") == columns
    assert dom.count("svg", "hist") >= columns - 5  # columns with values all have one
    assert sum(1 for tag, _ in dom.tags if tag == "rect") > columns  # bars drawn

    flow = dom.texts["flow-table"]
    for level, entry in report_run.manifest["levels"].items():
        assert level in flow and f"{entry['rows']:,}" in flow
    phases = dom.texts["phase-table"]
    assert all(name in phases for name in ("stage", "validate", "transform", "total"))
    rules = dom.texts["failing-rules"]
    assert RAISED in rules and "I12.json" in rules and "Archetypes[51]" in rules
    assert "power_effects.named_power.known" in rules  # a warning, with its examples' files
    assert "db/Player/" in rules


def test_report_content_from_the_run(report_run: Run) -> None:
    """The figures behind the page: per level staged, rejected and accepted rows and the
    table's rows; each failing rule with examples naming file and record; a profile of every
    table column."""
    data = build_report(report_run)
    flow = {f["level"]: f for f in data["flow"]}
    archetypes = flow["archetypes"]
    assert (archetypes["staged"], archetypes["rejected"], archetypes["accepted"]) == (61, 1, 60)
    assert archetypes["table"] == "archetypes" and archetypes["table_rows"] == 60
    assert archetypes["source"] == "archetypes" and archetypes["files"] == 1
    assert flow["powers"]["parent"] == "powersets" and flow["powers"]["rejected"] == 0
    assert flow["set_special_bonuses"]["shared_with"] == ["set_bonuses"]
    assert {t["table"] for t in data["tables"]} == set(report_run.manifest["tables"])
    assert data["load"] is None and data["load_note"]

    rules = {r["name"]: r for r in data["rules"]}
    assert rules[RAISED]["severity"] == "error" and rules[RAISED]["failed"] == 1
    assert rules[RAISED]["examples"][0] | {"values": None} == {
        "file": "I12.json", "record": 0, "path": "Archetypes[51]", "values": None}
    assert all(x["file"] and x["record"] is not None for r in data["rules"] for x in r["examples"])

    profiles = data["profiles"]["targets"]
    assert data["profiles"]["of"] == "tables" and set(profiles) == set(report_run.manifest["tables"])
    powers = {c["name"]: c for c in profiles["powers"]["columns"]}
    assert profiles["powers"]["rows"] == 428
    assert powers["power_id"]["distinct"] == 428 and powers["power_id"]["null_share"] == 0.0
    assert sum(b["count"] for b in powers["power_id"]["histogram"]["bars"]) == 428
    assert [p["name"] for p in data["phases"]] == ["stage", "validate", "transform"]


def test_page_needs_no_network_and_escapes_the_data(report_run: Run) -> None:
    """Nothing is fetched (no src, no external href, no @import or url()); text from the export
    is escaped, whatever it holds."""
    data = build_report(report_run)
    page = render_html(data)
    assert not re.search(r"""\s(src|href)\s*=\s*["']?(https?:|//)""", page, re.IGNORECASE)
    assert "<link" not in page and "@import" not in page and "url(" not in page

    hostile = '</td></table><script>alert("x")</script><img src=http://example.com/a.png>'
    data["rules"][0]["examples"][0]["values"] = {"name": hostile}
    data["rules"][0]["examples"][0]["file"] = hostile
    data["profiles"]["targets"]["powers"]["columns"][0]["min"] = hostile
    page = render_html(data)
    assert page.count("<script>") == 1 and "<img" not in page
    assert page.count("&lt;script&gt;alert(") == 3


def test_profile_of_awkward_columns(tmp_path: Path) -> None:
    """All-null, NaN and infinity, empty text, booleans, lists, dates, an empty table and a
    folder named with a quote profile without error: min/max over finite values, histograms over
    what has a value."""
    df = pl.DataFrame({
        "nothing": pl.Series([None, None, None, None], dtype=pl.Int64),
        "x": [1.0, float("nan"), float("inf"), 3.0],
        "flag": [True, False, None, True],
        "name": ["", "b", "b", None],
        "tags": [[], ["a"], ["a", "b", "c"], None],
        "day": [date(2026, 1, 1), None, date(2026, 11, 29), date(2026, 1, 1)],
        "_file": ["f"] * 4,
    })
    path = tmp_path / "it's" / "t.parquet"
    path.parent.mkdir()
    df.write_parquet(path)
    schema = {k: str(v) for k, v in df.schema.items()}
    out = profile_all([("t", [path], schema), ("empty", [], schema)])
    cols = {c["name"]: c for c in out["t"]["columns"]}
    assert "_file" not in cols and out["t"]["rows"] == 4
    assert cols["nothing"]["null_share"] == 1.0 and cols["nothing"]["histogram"] is None
    assert (cols["x"]["min"], cols["x"]["max"]) == ("1", "3")
    assert sum(b["count"] for b in cols["x"]["histogram"]["bars"]) == 2
    assert {b["label"]: b["count"] for b in cols["flag"]["histogram"]["bars"]} == {"true": 2, "false": 1}
    assert cols["name"]["min"] == '""' and cols["name"]["distinct"] == 2
    assert (cols["tags"]["min"], cols["tags"]["max"]) == ("0", "3")
    assert cols["tags"]["histogram"]["of"] == "length"
    day = cols["day"]
    assert (day["min"], day["max"], day["distinct"]) == ("2026-01-01", "2026-11-29", 2)
    assert out["empty"]["rows"] == 0 and len(out["empty"]["columns"]) == 6


def test_cli_run_prints_the_report_and_report_reads_the_ledger(mids_sample: Path, pg_url: str,
                                                               tmp_path: Path) -> None:
    """`etl run` writes report.html into the run and names it at the end, just before the run
    directory (in its JSON too); `etl report RUN` writes it again (--out, --json) with the
    load's figures from the ledger."""
    cli = CliRunner()
    staging = ["--staging-dir", str(tmp_path / "staging")]
    res = cli.invoke(main, [*staging, "run", "mids", str(mids_sample), "--database-url", pg_url])
    assert res.exit_code == 0, res.output
    run_dir = Path(res.output.strip().splitlines()[-1])  # still the last line, as scripts expect
    assert res.stdout.strip() == str(run_dir)
    assert f"report: {run_dir / REPORT_HTML}" in res.stderr.splitlines()[-1]
    page = (run_dir / REPORT_HTML).read_text()
    assert 'id="load-info"' in page and "succeeded" in page and "from this run" in page

    res = cli.invoke(main, [*staging, "run", "mids", str(mids_sample), "--database-url", pg_url, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["report"] == str(run_dir / REPORT_HTML)

    out = tmp_path / "out" / "mids.html"
    res = cli.invoke(main, ["report", str(run_dir), "--out", str(out), "--database-url", pg_url, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"report": str(out)}
    page = out.read_text()
    assert "from run ledger" in page and 'data-phase="keys"' in page  # the load's steps, from the ledger
    loaded = Dom(page).texts["tables-table"]
    assert "428 ✓" in loaded and "≠" not in loaded

    res = cli.invoke(main, ["report", str(run_dir), "--database-url", "postgresql://postgres@127.0.0.1:9/x"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(run_dir / REPORT_HTML)
    assert "could not be read" in (run_dir / REPORT_HTML).read_text()

    res = cli.invoke(main, ["report", "--help"])
    assert res.exit_code == 0 and "Example" in res.output


def test_cli_run_stopped_by_validation_names_the_report(mids_sample: Path, pg_url: str,
                                                        tmp_path: Path) -> None:
    """When validation stops `etl run`, the error's next step names the report page, which shows
    the rejected row in the flow and the rule with its source file and record."""
    res = CliRunner().invoke(main, ["--staging-dir", str(tmp_path / "staging"), "run", "mids",
                                    str(mids_sample), "--database-url", pg_url, "--rule", f"{RAISED}=error"])
    assert res.exit_code == 1, res.output
    found = re.search(r"the run's report: (\S+report\.html)", res.stderr)
    assert found, res.stderr
    dom = Dom(Path(found[1]).read_text())
    assert "validation failed" in dom.texts["load-info"]
    row = re.search(r"archetypes\s*61\s*1\s*60", dom.texts["flow-table"])
    assert row, dom.texts["flow-table"]
    assert RAISED in dom.texts["failing-rules"] and "Archetypes[51]" in dom.texts["failing-rules"]


def test_report_of_a_run_only_staged(mids_sample: Path, tmp_path: Path) -> None:
    """Before validation and transform the page still has every part: the staged levels'
    columns are profiled (without the lineage columns), the rules say what to run next."""
    from etl.stage import stage

    run = stage(get_dataset("mids"), [mids_sample], settings=Settings(staging_dir=tmp_path)).run
    data = build_report(run)
    assert data["validation"] is None and data["rules"] == [] and data["tables"] == []
    assert data["profiles"]["of"] == "levels"
    assert set(data["profiles"]["targets"]) == set(run.manifest["levels"])
    assert "_file" not in {c["name"] for c in data["profiles"]["targets"]["powers"]["columns"]}
    assert all(f["rejected"] is None and f["table_rows"] is None for f in data["flow"])
    dom = Dom(render_html(data))
    assert {"flow-table", "phase-table", "failing-rules", "column-profiles"} <= dom.ids
    assert "etl validate" in dom.texts["failing-rules"]
