"""How a candidate gets its accuracy: evaluators (in-process training, accuracy table), data, training, ONNX export."""
