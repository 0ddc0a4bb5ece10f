"""INT8 calibration images on the wire: an ONNX model whose one initializer holds them.

The agent keeps only what passes its model validation (``device_agent.core.validate``), so the
images travel as a valid ONNX graph (``calibration_images`` x a ``scale`` input -> output) uploaded
with ``UploadModel`` and named in ``BuildConfig.calibration_sha256``; no second upload path,
no pickles. ``read_calibration`` gives them back as float32 (N, C, H, W).
"""
from __future__ import annotations

import numpy as np

NAME = "calibration_images"


def calibration_model(images: np.ndarray) -> bytes:
    """The ONNX container of ``images`` (float32, preprocessed as the model expects)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = np.ascontiguousarray(images, dtype=np.float32)
    # a graph needs an input to pass validation: images x scale, scale a [1] input
    graph = helper.make_graph([helper.make_node("Mul", [NAME, "scale"], ["images"])], "hwnas_calibration",
                              [helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(x.shape))],
                              initializer=[numpy_helper.from_array(x, NAME)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hwnas")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def read_calibration(path: str) -> np.ndarray:
    """The images of a container written by :func:`calibration_model`; ``ValueError`` otherwise."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path, load_external_data=False)
    for init in model.graph.initializer:
        if init.name == NAME:
            return numpy_helper.to_array(init).astype(np.float32, copy=False)
    raise ValueError(f"{path} holds no {NAME!r} initializer (not an hwnas calibration container)")
