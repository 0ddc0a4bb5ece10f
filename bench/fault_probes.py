"""Issue 14's fault and bad-input campaign in one command: ``python bench/fault_probes.py``.

Runs the ``test_probe_NN_*`` tests (``tests/test_faults_*.py``: real processes, real table
agents on loopback, real SQLite files, a tmpfs for the full disk) and prints one row per probe::

    probe | held/broke | cases | note

A probe *held* when every case of it passed, *broke* when one failed (the note gives the first
failure's message), *skipped* when the machine cannot run it (e.g. no permission to mount).
The exit status is 1 when a probe broke. Extra arguments go to pytest (``-k 07``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: what each probe checks (issue 14's items)
PROBES = {
    "01": "full disk / store error in a worker: one-line error, non-zero exit, resume continues",
    "02": "one process per run directory (OS lock naming the holder's PID)",
    "03": "resume keeps the agents and the device-key bindings",
    "04": "every TOML key type- and range-checked before anything starts",
    "05": "registrations never starve the registry's heartbeats",
    "06": "export exits non-zero for missing or corrupt models",
    "07": "damaged or read-only stores: one-line errors, read commands never write",
    "08": "an agent refusing the token: shown once, exponential back-off, in status",
    "09": "the auto-started local agent dies with its parent",
    "10": "start-up checks before the run directory exists",
    "11": "impossible agent values are failed measurements naming the agent",
    "12": "rank-0 (scalar) inputs pass the output check",
    "13": "address aliases are one agent",
    "14": "rejected models never stay in the agent's cache",
    "15": "plain periodic progress lines when stderr is not a terminal",
}


def run(pytest_args: list[str]) -> dict[str, dict[str, object]]:
    """Run the probes; per probe number: cases, failures, skips, first message."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "probes.xml"
        tests = sorted(str(p) for p in (ROOT / "tests").glob("test_faults_*.py"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                        *tests, *pytest_args], cwd=ROOT, env=env)
        root = ET.parse(xml).getroot()
    out: dict[str, dict[str, object]] = OrderedDict((k, {"cases": 0, "broke": 0, "skipped": 0, "note": ""})
                                                    for k in PROBES)
    for case in root.iter("testcase"):
        m = re.match(r"test_probe_(\d\d)_", case.get("name", ""))
        if not m or m.group(1) not in out:
            continue
        row = out[m.group(1)]
        row["cases"] = int(row["cases"]) + 1
        for tag in ("failure", "error"):
            bad = case.find(tag)
            if bad is not None:
                row["broke"] = int(row["broke"]) + 1
                if not row["note"]:
                    row["note"] = (bad.get("message") or "").splitlines()[0][:100] if bad.get("message") else tag
        skip = case.find("skipped")
        if skip is not None:
            row["skipped"] = int(row["skipped"]) + 1
            row["note"] = row["note"] or (skip.get("message") or "")[:100]
    return out


def main(argv: list[str]) -> int:
    rows = run(argv)
    print(f"\n{'probe':6s} | {'result':8s} | cases | what / note")
    print("-" * 100)
    broke = False
    for num, row in rows.items():
        if not row["cases"]:
            result = "not run"
        elif row["broke"]:
            result, broke = "broke", True
        elif row["skipped"] == row["cases"]:
            result = "skipped"
        else:
            result = "held"
        print(f"{num:6s} | {result:8s} | {row['cases']:5d} | {PROBES[num]}"
              + (f"\n{'':6s} | {'':8s} | {'':5s} |   {row['note']}" if row["note"] else ""))
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
