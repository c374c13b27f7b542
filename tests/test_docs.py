"""Documented = tested: every code block of README.md and docs/guide.md runs here, extracted from the files.

Python blocks of one file run in order in one namespace (a later block may use what an earlier one
defined), in a fresh working folder. Shell blocks run line by line with bash in that folder, with the
``prunekit`` of this checkout first on PATH and ``benchmarks/`` linked in; ``make demo`` / ``make test``
(the set-up commands) are checked with ``make -n`` so the suite does not call itself. Fences without a
language (or ``text``) are printed output, not code.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/guide.md"]
FENCE = re.compile(r"^```([A-Za-z]*)[^\n]*\n(.*?)^```", re.S | re.M)
CODE_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}


def blocks(doc: str) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every code block of ``doc`` (output fences left out)."""
    text = (ROOT / doc).read_text()
    out = []
    for m in FENCE.finditer(text):
        lang = CODE_LANGS.get(m.group(1).lower())
        if lang is not None:
            out.append((text.count("\n", 0, m.start()) + 1, lang, m.group(2)))
    return out


def test_every_doc_has_code_blocks() -> None:
    for doc in DOCS:
        assert blocks(doc), f"{doc} has no code block: the extraction pattern is broken"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _run_shell_line(line: str, cwd: Path, doc: str, lineno: int) -> None:
    words = shlex.split(line, comments=True)
    if not words:
        return
    if words[0] == "make":  # the set-up commands: check the target exists, do not recurse into the suite
        r = subprocess.run(["make", "-n", "-C", str(ROOT), *words[1:]], capture_output=True, text=True)
    else:
        r = subprocess.run(["bash", "-c", line], cwd=cwd, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert r.returncode == 0, f"{doc}:{lineno}: `{line}` exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _lines(code: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return [ln for ln in code.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_doc_blocks_run(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")  # the docs name configs by their repository path
    namespace: dict[str, object] = {"__name__": f"doc_{Path(doc).stem}"}
    ran = 0
    for lineno, lang, code in blocks(doc):
        ran += 1
        if lang == "python":
            try:
                exec(compile(code, f"{doc}:{lineno}", "exec"), namespace)
            except Exception as e:  # noqa: BLE001 - report which block failed
                raise AssertionError(f"{doc}: python block at line {lineno} failed: {e!r}") from e
        else:
            for line in _lines(code):
                _run_shell_line(line, tmp_path, doc, lineno)  # asserts the line's exit code
    assert ran == len(blocks(doc)) > 0, f"{doc}: ran {ran} code blocks"
