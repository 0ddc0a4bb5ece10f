"""Deployment: chosen candidates of a run exported as ONNX + device artifact + manifest.json."""
from __future__ import annotations

__all__ = ["export_candidates", "read_manifest"]


def __getattr__(name: str):  # lazy: importing deploy pulls in neither onnx nor the agent client
    if name == "export_candidates":
        from deploy.export import export_candidates

        return export_candidates
    if name == "read_manifest":
        from deploy.manifest import read_manifest

        return read_manifest
    raise AttributeError(name)
