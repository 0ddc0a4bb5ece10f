"""Export of a built candidate to ONNX: the file format the device agents receive.

The graph written by :func:`export_onnx`:

- opset 17 by default, produced by PyTorch's legacy TorchScript exporter (``dynamo=False``);
- one input named ``input`` of shape ``(batch, C, H, W)`` (float32) and one output named
  ``logits`` of shape ``(batch, num_classes)``; the batch axis is dynamic (``batch``);
- the model is exported in eval mode (batch norm uses running statistics, dropout is off);
- ``metadata_props`` carry string key/values given by the caller, by convention
  ``hwnas.space`` (space name), ``hwnas.arch_key`` (``space.key(genome)``) and
  ``hwnas.genome`` (the genome's JSON);
- the model passes ``onnx.checker.check_model``.

Anything that goes wrong is raised as :class:`ExportError` with the cause in its message.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from typing import Any, Mapping

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The model could not be exported to a valid ONNX graph."""


def export_onnx(
    model: Any,
    input_shape: tuple[int, ...],
    *,
    metadata: Mapping[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
) -> bytes:
    """Export ``model`` (a ``torch.nn.Module``) to ONNX bytes (see the module docstring).

    ``input_shape`` is the shape of one example input, e.g. ``(1, 3, 32, 32)``; its batch
    dimension is exported as dynamic. The model is put in eval mode and left in eval mode.
    """
    import onnx
    import torch

    if len(input_shape) < 2 or any(int(d) < 1 for d in input_shape):
        raise ExportError(f"invalid input shape {tuple(input_shape)!r}")
    model.eval()
    dummy = torch.zeros(tuple(int(d) for d in input_shape), dtype=torch.float32)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter is deprecated in favour of dynamo; it is far faster for the
            # small CNNs exported here, so its warnings are silenced on purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
            torch.onnx.export(
                model,
                (dummy,),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:  # torch raises many types; callers get one
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc

    try:
        proto = onnx.load_from_string(buf.getvalue())
        if metadata:
            existing = {p.key: p for p in proto.metadata_props}
            for key, value in metadata.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise ExportError(
                        f"metadata must map str to str, got {key!r}: {type(value).__name__}"
                    )
                entry = existing.get(key) or proto.metadata_props.add()
                entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"exported model is not valid ONNX: {type(exc).__name__}: {exc}") from exc
    return proto.SerializeToString()


def read_metadata(model_bytes: bytes) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model as a dict."""
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}


def count_params(model: Any) -> int:
    """Number of trainable parameters of a ``torch.nn.Module``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (how models are addressed on the wire and in caches)."""
    return hashlib.sha256(data).hexdigest()
