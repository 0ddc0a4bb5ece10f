"""Static check of the minimum Python: everything that installs with the agent runs on 3.10.

``vermin`` (a test dependency) reads the code's syntax, modules and members and says which
Python versions it needs; JetPack 6 ships Python 3.10, so nothing here may need 3.11+
(``tomllib``, ``hashlib.file_digest``, ``except*``, ...: ``device_agent/compat.py`` has shims).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_installed_code_needs_at_most_python_310() -> None:
    pytest.importorskip("vermin", reason="vermin is a test dependency: pip install 'hwnas[test]'")
    out = subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations", "-t=3.10-",
                          "--eval-annotations",
                          "device_agent", "protos", "deploy", "search"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
