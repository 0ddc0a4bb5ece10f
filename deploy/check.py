"""The task-level output check of an exported artifact, and accuracy of an ONNX model.

An artifact (an fp16 graph, an ORT-optimized graph) is judged by what the task needs: on real
images of the run's dataset, the share of images whose top-1 class equals the reference ONNX's
(``min_agreement``, default 99 %); the largest absolute difference of the outputs is reported
beside it. Elementwise tolerances on random inputs (1e-5 / 1e-3) would reject most fp16 builds
that classify exactly as well. Both models run here with ONNX Runtime's CPU provider.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: default share of images whose top-1 class must agree with the reference
MIN_AGREEMENT = 0.99


def cpu_session(model: bytes | str) -> Any:
    """A single-threaded ONNX Runtime CPU session on ``model`` (bytes or a path)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def run_batches(sess: Any, images: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """The first output of ``sess`` on ``images`` (N, C, H, W), in batches its input accepts."""
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    outs = []
    for i in range(0, len(images), step):
        x = images[i:i + step].astype(dtype)
        n = len(x)
        if fixed and n < fixed:  # pad the last batch of a fixed-batch model
            x = np.concatenate([x, np.zeros((fixed - n, *x.shape[1:]), dtype)])
        outs.append(np.asarray(sess.run(None, {inp.name: x})[0])[:n].astype(np.float64))
    return np.concatenate(outs) if outs else np.empty((0,))


def agreement_check(reference: bytes, artifact: bytes, images: np.ndarray, *,
                    min_agreement: float = MIN_AGREEMENT, source: str = "") -> dict[str, Any]:
    """Top-1 agreement of ``artifact`` with ``reference`` on ``images`` (status passed/failed/error)."""
    import onnxruntime as ort

    method = (f"ONNX Runtime {ort.__version__} CPU: top-1 class of the artifact vs model.onnx on "
              f"{len(images)} images{f' of {source}' if source else ''}; passes at >= {min_agreement:.1%}")
    try:
        ref = run_batches(cpu_session(reference), images)
        got = run_batches(cpu_session(artifact), images)
    except Exception as exc:  # noqa: BLE001 - an artifact that does not run here is a result
        return {"status": "error", "method": method, "error": f"{type(exc).__name__}: {exc}"}
    if ref.shape != got.shape:
        return {"status": "failed", "method": method, "error": f"output shapes differ: {ref.shape} vs {got.shape}"}
    agree = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
    return {"status": "passed" if agree >= min_agreement else "failed", "method": method,
            "top1_agreement": agree, "min_agreement": min_agreement, "images": int(len(images)),
            "max_abs_diff": float(np.max(np.abs(ref - got))) if ref.size else 0.0}


def onnx_accuracy(model: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` (ONNX Runtime CPU) on preprocessed ``images``."""
    logits = run_batches(cpu_session(model), images)
    return float(np.mean(logits.argmax(axis=1) == np.asarray(labels)))
