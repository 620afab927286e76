"""Every ```python block of the README runs as printed, each in a fresh interpreter.

The blocks run from a temporary folder with this checkout first on PYTHONPATH and one OpenMP thread,
so a block that forgets an import or a name fails here as it would for a reader.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[str, str]]:
    """(the heading above the block, its code) for every python block of the README."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for match in FENCE.finditer(text):
        headings = re.findall(r"^#+ (.+)$", text[:match.start()], re.M)
        blocks.append((headings[-1] if headings else "top", match.group(1)))
    return blocks


def test_the_readme_has_python_blocks():
    assert len(readme_blocks()) >= 3


@pytest.mark.parametrize("heading, code", readme_blocks(), ids=[h for h, _ in readme_blocks()])
def test_readme_block_runs_as_printed(heading, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"README block under {heading!r} failed:\n{done.stderr[-3000:]}"
