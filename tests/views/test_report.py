"""`cnnviz report`: one self-contained HTML file, checked in a real headless browser."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import assert_clean_error, cli, tree_digest

CHROMIUM = Path(os.environ.get("CNNVIZ_CHROMIUM", "/usr/bin/chromium"))
# Where a copy of the screenshot goes for people to look at (only if that folder exists).
# Set CNNVIZ_REPORT_SCREENSHOT=path to keep a copy of the screenshot for looking at it.
KEEP_SCREENSHOT = os.environ.get("CNNVIZ_REPORT_SCREENSHOT")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class TagBalance(HTMLParser):
    """Every non-void element closed in order; collects src/href values."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href"):
                self.urls.append(value or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def reported_store(trained_store, tiny_data, session_cache, tmp_path_factory):
    """A copy of the trained run with an evolution GIF (made from a picture whose name needs escaping) and a report.

    Built once for the module (the report tests only read it).
    """
    from PIL import Image

    source, run_id = trained_store
    base = tmp_path_factory.mktemp("reported")
    store = base / "artifacts"
    shutil.copytree(source, store)
    picture = base / "<b>bold.png"
    digit = Image.new("L", (28, 28), 0)
    digit.paste(255, (11, 6, 17, 22))  # a bar: the picture recipes refuse a blank picture
    digit.save(picture)
    old = os.environ.get("CNNVIZ_CACHE_DIR")
    os.environ["CNNVIZ_CACHE_DIR"] = str(session_cache)
    try:
        result = cli("evolution", "--artifacts", store, "--image", str(picture), "--quiet")
        assert result.exit_code == 0, result.stderr
        result = cli("report", "--artifacts", store, "--data-dir", tiny_data, "--images", "2", "--json", "--quiet")
        assert result.exit_code == 0, (result.stderr, result.exception)
    finally:
        if old is None:
            os.environ.pop("CNNVIZ_CACHE_DIR", None)
        else:
            os.environ["CNNVIZ_CACHE_DIR"] = old
    return store, run_id, json.loads(result.stdout)


def test_report_is_one_self_contained_valid_html_file(reported_store):
    store, run_id, doc = reported_store
    path = store / run_id / "report" / "report.html"
    assert doc["report"] == str(path) and doc["run_id"] == run_id
    assert doc["sections"]["evaluation"] == "computed" and doc["sections"]["filters"] == "computed"
    assert doc["sections"]["featuremaps"] == "computed" and doc["sections"]["evolution"] == "stored"
    assert doc["missing"]["patches"] == f"cnnviz patches --run {run_id}"
    html = path.read_text(encoding="utf-8")

    parser = TagBalance()
    parser.feed(html)
    parser.close()
    assert parser.doctype and parser.doctype.lower() == "doctype html"
    assert parser.errors == [] and parser.stack == []
    # Nothing to fetch: every src is a data URI, every link an in-page anchor.
    assert parser.urls and all(u.startswith("data:image/") or u.startswith("#") for u in parser.urls), parser.urls
    assert not re.search(r"https?://|@import|<script|<link", html)
    assert html.count('src="data:image/gif;base64,') == 2  # filters and feature maps over the epochs
    assert html.count('src="data:image/png;base64,') >= 2 + 2 + 2 + 1  # curves, evaluation, filters, maps...
    # Autoescaping: the picture's file name shows as text, never as markup.
    assert "<b>bold" not in html and "&lt;b&gt;bold" in html

    manifest = json.loads((store / run_id / "manifest.json").read_text())
    record = manifest["outputs"]["report"]
    assert record["checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    assert record["checkpoint_sha256"] in html
    assert manifest["files"]["report/report.html"]["sha256"]
    assert record["options"]["images"] == 2


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (Debian package 'chromium')")
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="Python package 'playwright' not installed")
def test_report_loads_in_headless_chromium_without_errors(reported_store, tmp_path):
    from playwright.sync_api import sync_playwright

    store, run_id, _doc = reported_store
    path = store / run_id / "report" / "report.html"
    problems, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in (
                "error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(path.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth}))"
            )
            title = page.title()
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
            page.emulate_media(media="print")
            pdf = tmp_path / "report.pdf"
            page.pdf(path=str(pdf), format="A4", print_background=True)
        finally:
            browser.close()

    assert problems == []
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert len(images) >= 9
    assert [i for i in images if not (i["complete"] and i["w"] > 0)] == []
    assert title == f"cnnviz report: run {run_id}"
    assert any(h.startswith("Filter evolution") for h in headings)
    assert screenshot.stat().st_size > 10_000 and pdf.read_bytes().startswith(b"%PDF")
    if KEEP_SCREENSHOT:
        shutil.copyfile(screenshot, KEEP_SCREENSHOT)


def test_report_without_test_images_shows_what_exists_and_names_the_commands(store_copy):
    """No dataset reachable (offline, data folder moved away): the report still comes out and says what is missing."""
    store, run_id = store_copy
    manifest_path = store / run_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["data_dir"] = str(store / "moved-away")
    manifest_path.write_text(json.dumps(manifest))
    result = cli("evolution", "--artifacts", store, "--quiet")
    assert result.exit_code == 0, result.stderr
    damaged = store / run_id / "evolution/conv1/changes.png"
    damaged.write_bytes(damaged.read_bytes() + b"x")
    result = cli("report", "--artifacts", store, "--offline", "--json", "--quiet")
    assert result.exit_code == 0, (result.stderr, result.exception)
    doc = json.loads(result.stdout)
    assert doc["sections"]["evaluation"] == "missing"
    assert doc["missing"]["evaluation"] == f"cnnviz evaluate --run {run_id}"
    assert doc["sections"]["filters"] == "computed"  # needs no images
    assert doc["sections"]["featuremaps"] == "missing"
    assert any("evolution/conv1/changes.png" in w and "sha256" in w for w in doc["warnings"])
    html = (store / run_id / "report/report.html").read_text()
    assert "could not be loaded" in html and f"cnnviz evaluate --run {run_id}" in html


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [(("--images", "99"), 2, "between 0 and 12"), (("--run", "nope"), 4, "No run 'nope'")],
)
def test_bad_options_leave_the_store_unchanged(store_copy, args, code, needle):
    store, _run_id = store_copy
    digest = tree_digest(store)
    assert_clean_error(cli("report", "--artifacts", store, *args), code, needle)
    assert tree_digest(store) == digest


def test_open_hands_the_file_to_the_browser(store_copy, tmp_path):
    """--open goes through Python's webbrowser module, which honours $BROWSER (here a script that records the URL)."""
    import sys

    from helpers import cnnviz_subprocess

    store, run_id = store_copy
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys, pathlib\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n")
    result = cnnviz_subprocess(
        "report", "--artifacts", store, "--offline", "--images", "0", "--open", "--quiet",
        env={"BROWSER": f"{sys.executable} {browser} %s", "CNNVIZ_CACHE_DIR": os.environ["CNNVIZ_CACHE_DIR"]},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert opened.read_text() == (store / run_id / "report" / "report.html").as_uri()


@pytest.mark.slow
def test_a_second_report_replaces_the_first_in_place_and_says_so(store_copy, tiny_data):
    store, run_id = store_copy
    report_dir = store / run_id / "report"
    args = ("report", "--artifacts", store, "--data-dir", tiny_data, "--images", "0")
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    assert "Replaced" not in first.stderr
    created = json.loads((store / run_id / "manifest.json").read_text())["outputs"]["report"]["created"]
    assert cli("filters", "--artifacts", store, "--layer", "conv1", "--quiet").exit_code == 0
    second = cli(*args)
    assert second.exit_code == 0, second.stderr
    path = report_dir / "report.html"
    assert f"Replaced the report written {created}: {path} shows the run as it is now." in second.stderr
    assert str(path) not in second.stderr.replace(f"{path} shows", "")  # the result line stays on stdout
    assert [p.name for p in report_dir.iterdir()] == ["report.html"]
    assert "filters/conv1.png" in path.read_text()  # the new report shows what was added in between
    quiet = cli(*args, "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""
