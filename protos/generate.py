"""Generate the Python code of the wire contract from ``protos/**/*.proto``.

Run from the repository root: ``python -m protos.generate`` (or ``make protos``). The include
root is the repository root, so the proto path (``protos/hwnas/agent/v1/agent.proto``) mirrors
the Python package path and the generated ``agent_pb2_grpc.py`` imports its sibling as
``from protos.hwnas.agent.v1 import agent_pb2`` (the classic pitfall: a top-level
``import agent_pb2`` would break once installed). ``--out DIR`` writes the tree elsewhere (the
test regenerates into a temporary folder and diffs it with the committed files).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("protos/hwnas/agent/v1/agent.proto", "protos/hwnas/registry/v1/registry.proto")


def generate(out_dir: Path | str = REPO_ROOT) -> list[Path]:
    """Compile every proto into ``out_dir`` (``*_pb2.py``, ``*_pb2_grpc.py``, ``*.pyi``).

    Returns the generated files. Raises ``RuntimeError`` when protoc fails.
    """
    from grpc_tools import protoc  # build-time dependency (the ``test`` extra)

    import grpc_tools

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *PROTO_FILES,
    ]
    # protoc resolves relative proto paths against the include roots; run from the root.
    import os

    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        rc = protoc.main(args)
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    produced = []
    for proto in PROTO_FILES:
        stem = proto[: -len(".proto")]
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            path = out / f"{stem}{suffix}"
            if not path.exists():
                raise RuntimeError(f"protoc did not produce {path}")
            produced.append(path)
    return produced


def main(argv: list[str] | None = None) -> int:
    """Command line entry: ``python -m protos.generate [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT), help="output root (default: repository root)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
