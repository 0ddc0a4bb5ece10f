"""NeuralPower-style layer-wise cost model (issue 12): features, model, fitting, prediction.

- :mod:`search.costmodel.features`: ONNX graph -> fused layers with features; profile names -> layers.
- :mod:`search.costmodel.model`: per-layer-type learners, network stage, interval, file format.
- :mod:`search.costmodel.fit`: :func:`fit_from_measurements`, :func:`predict_onnx`.

``python -m search.costmodel predict FILE MODEL.onnx [--json]`` prints a prediction.
"""
from __future__ import annotations

from search.costmodel.features import FEATURES, FeatureError, Layer, extract_layers, map_profile, node_index
from search.costmodel.fit import Measurement, fit_from_measurements, network_metrics, predict_onnx
from search.costmodel.model import CostModel, CostModelError

__all__ = ["FEATURES", "CostModel", "CostModelError", "FeatureError", "Layer", "Measurement",
           "extract_layers", "fit_from_measurements", "map_profile", "network_metrics",
           "node_index", "predict_onnx"]
