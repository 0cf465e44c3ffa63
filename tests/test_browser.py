"""The playground in a real headless Chromium (Debian's `chromium`, driven by Playwright): an example
typeset, a syntax error marked at its place, and the page rebuilt from its URL; a screenshot of each
under the test's temporary folder. `make test-browser` runs them; without Chromium they are skipped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import indexgrad as ig
from indexgrad.api import FILENAME
from indexgrad.derive import derive_for, derive_jvp, forward_statements
from indexgrad.latex import program_latex
from indexgrad.serve import running

CHROMIUM = "/usr/bin/chromium"
# as root and on a closed network: no sandbox, and none of Chromium's own connections
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.browser


def launch(playwright: Any) -> Any:
    """Debian's Chromium under Playwright (Playwright's own browser download is not used)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"no headless Chromium at {CHROMIUM}: apt-get install chromium, then make test-browser"
        if os.environ.get("INDEXGRAD_BROWSER_TESTS") == "required":
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture(scope="module")
def url(browser: Any) -> Iterator[str]:
    with running(workers=2) as base:
        yield base + "/"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    p.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    yield p
    context.close()
    assert not errors, errors  # no script error and no failed load on the page


def settled(page: Any) -> None:
    """Wait until every panel shows the answer for the page's current state."""
    page.wait_for_selector("body:not([data-busy])", state="attached", timeout=30_000)


def typeset(page: Any, selector: str) -> str:
    """The LaTeX that KaTeX typeset in `selector` (KaTeX keeps it in the MathML annotation)."""
    return page.eval_on_selector(f"{selector} annotation", "a => a.textContent")


def test_an_example_is_one_click_away_and_its_gradient_is_typeset(
    page: Any, url: str, tmp_path: Path
) -> None:
    page.goto(url)
    settled(page)
    page.click("#examples button[data-name=mlp]")
    settled(page)
    src = (ROOT / "examples" / "mlp.idx").read_text()
    assert page.input_value("#source") == src
    p = ig.parse(src, FILENAME)
    d = derive_for(p, [], None)
    assert typeset(page, "#derived-math") == program_latex(forward_statements(p, d), d.statements)
    assert typeset(page, "#source-math") == program_latex([], p.statements)
    box = page.locator("#derived-math .katex-html").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100  # drawn, not only present
    assert "W1.grad[d,h] +=" in page.text_content("#derived-idx")
    assert "passed" in page.text_content("#check .verdict")
    assert page.locator("#graph svg g.node").count() > 5
    assert page.locator("#cost tr.total").count() == 1
    assert "active" in page.get_attribute("#examples button[data-name=mlp]", "class")
    page.screenshot(path=tmp_path / "example.png", full_page=True)


def test_a_syntax_error_is_marked_at_its_line_and_column(page: Any, url: str, tmp_path: Path) -> None:
    page.goto(url)
    settled(page)
    page.fill("#source", "param W[j,i], B[i]\ny[b,i] = x[b,j] W[j,i]\n")
    page.click("#source")
    page.keyboard.press("Control+End")
    page.keyboard.type("h[b,i] = relu(y[b,i] + * B[i])\n", delay=15)  # typed, as a person would
    settled(page)
    src = page.input_value("#source")
    with pytest.raises(ig.IndexgradError) as e:
        ig.parse(src)
    line, column = e.value.line, e.value.column
    assert (line, column) == (3, 24)
    mark = page.locator("#marks mark.error")
    assert mark.count() == 1
    assert (mark.get_attribute("data-line"), mark.get_attribute("data-column")) == (str(line), str(column))
    assert mark.text_content() == src.splitlines()[line - 1][column - 1]  # over the '*'
    # drawn at that place: on the row of gutter line 3, (column - 1) characters into the text
    m, row = mark.bounding_box(), page.locator("#gutter div").nth(line - 1).bounding_box()
    assert abs(m["y"] - row["y"]) < 3 and page.get_attribute("#gutter div >> nth=2", "class") == "error"
    left = page.evaluate(
        "() => { const s = getComputedStyle(document.getElementById('marks'));"
        " return document.getElementById('marks').getBoundingClientRect().left + parseFloat(s.paddingLeft); }"
    )
    assert abs((m["x"] - left) - (column - 1) * m["width"]) < 2
    item = page.text_content("#diagnostics li.error")
    assert f"{line}:{column}" in item and e.value.message in item
    page.screenshot(path=tmp_path / "syntax_error.png", full_page=True)
    page.click("#diagnostics li.error button")  # the place in the list leads to the place in the text
    offset = sum(len(s) + 1 for s in src.splitlines()[: line - 1]) + column - 1
    assert page.evaluate("() => document.getElementById('source').selectionStart") == offset


def test_the_url_reproduces_the_page(page: Any, url: str, browser: Any, tmp_path: Path) -> None:
    page.goto(url)
    settled(page)
    page.click("#examples button[data-name=correlation]")
    page.check("input[name=mode][value=jvp]")
    page.fill("#dims", "j=5")
    page.check("#backward")
    settled(page)
    src = (ROOT / "examples" / "correlation.idx").read_text()
    latex = program_latex([], derive_jvp(ig.parse(src, FILENAME)).statements)
    assert typeset(page, "#derived-math") == latex
    shown = {
        "derived": page.inner_html("#derived-math"),
        "graph": page.inner_html("#graph"),
        "cost": page.text_content("#cost"),
        "check": page.text_content("#check"),
    }
    assert "j=5" in shown["cost"] and "x.grad" in shown["graph"]  # dims and backward pass in effect
    link = page.url
    page.screenshot(path=tmp_path / "before.png", full_page=True)

    other = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()  # a fresh visitor
    other.goto(link)
    settled(other)
    for p_ in (other, page):
        if p_ is page:
            page.reload()
            settled(page)
        assert p_.input_value("#source") == src
        assert p_.is_checked("input[name=mode][value=jvp]") and p_.is_checked("#backward")
        assert p_.input_value("#dims") == "j=5"
        assert typeset(p_, "#derived-math") == latex
        assert p_.inner_html("#derived-math") == shown["derived"]
        assert p_.inner_html("#graph") == shown["graph"]
        assert p_.text_content("#cost") == shown["cost"]
        assert p_.text_content("#check") == shown["check"]
    other.screenshot(path=tmp_path / "reloaded.png", full_page=True)
    other.context.close()
    assert all((tmp_path / f).stat().st_size > 10_000 for f in ("before.png", "reloaded.png"))
