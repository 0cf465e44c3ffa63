"""docs/tutorial.md cannot go stale: its `$ indexgrad ...` outputs, listings and Python are re-run.

After a deliberate change of output, `python tests/test_tutorial.py --update` rewrites the
console blocks from the real program; review the diff before committing it.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "tutorial.md"
CONSOLE = re.compile(r"```console\n(.*?)```", re.S)
IDX = re.compile(r"```idx\n# file: (\S+)\n(.*?)```", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)
SKIP = {"train"}  # trains for minutes and prints timings; the tutorial shows the command only


def console_commands(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for every `$ ` line of every console block."""
    out: list[tuple[str, str]] = []
    for block in CONSOLE.findall(text):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            out.append((command, output))
    return out


def run_indexgrad(command: str) -> tuple[int, str]:
    """Run one `indexgrad ...` command line in-process from the repository root."""
    from indexgrad.cli import main

    argv = shlex.split(command)
    assert argv[0] == "indexgrad", f"only indexgrad commands belong in console blocks: {command}"
    buf = io.StringIO()
    with _chdir(ROOT):
        with contextlib.redirect_stdout(buf):
            code = main(argv[1:])
    return code, buf.getvalue()


@contextlib.contextmanager
def _chdir(path: Path):  # type: ignore[no-untyped-def]
    import os

    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


COMMANDS = console_commands(DOC.read_text())


def test_the_tutorial_shows_commands() -> None:
    assert len(COMMANDS) >= 10
    shown = " ".join(c for c, _ in COMMANDS)
    for sub in ("grad", "jvp", "graph", "cost"):
        assert f"indexgrad {sub} " in shown


@pytest.mark.parametrize("command,expected", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_console_output_is_current(
    command: str, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from indexgrad.cli import main

    argv = shlex.split(command)
    if argv[1] in SKIP:
        pytest.skip(f"`{argv[1]}` is shown without its output")
    monkeypatch.chdir(ROOT)
    assert argv[0] == "indexgrad"
    assert main(argv[1:]) == 0
    assert capsys.readouterr().out == expected


def test_the_seeds_swap_rule_examples_appear() -> None:
    out = dict(COMMANDS)["indexgrad grad examples/affine.idx"]
    for line in (
        "x.grad[b,j] += y.grad[b,i] W[j,i]",
        "W.grad[j,i] += y.grad[b,i] x[b,j]",
        "B.grad[i] += y.grad[b,i]",
    ):
        assert line in out.splitlines()
    assert (
        "x.grad[j+k] += y.grad[j] w[k]" in dict(COMMANDS)["indexgrad grad examples/correlation.idx"]
    )


@pytest.mark.parametrize("path,shown", IDX.findall(DOC.read_text()))
def test_file_listings_match_the_examples(path: str, shown: str) -> None:
    assert (ROOT / path).read_text() == shown


@pytest.mark.parametrize("code", PYTHON.findall(DOC.read_text()))
def test_python_blocks_run(
    code: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    exec(compile(code, str(DOC), "exec"), {"__name__": "tutorial"})
    assert capsys.readouterr().out


def update(path: Path = DOC) -> None:
    """Rewrite every console block's outputs from the real program (train lines are left bare)."""

    def block(m: re.Match[str]) -> str:
        parts = []
        for chunk in re.split(r"^\$ ", m.group(1), flags=re.M)[1:]:
            command = chunk.partition("\n")[0]
            output = ""
            if shlex.split(command)[1] not in SKIP:
                code, output = run_indexgrad(command)
                if code != 0:
                    raise SystemExit(f"`{command}` exited {code}")
            parts.append(f"$ {command}\n{output}")
        return "```console\n" + "".join(parts) + "```"

    path.write_text(CONSOLE.sub(block, path.read_text()))


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit("usage: python tests/test_tutorial.py --update")
    sys.path.insert(0, str(ROOT))
    update()
