"""Our ONNX -> torch converter: the graph module (graph.py) and the per-operator torch ops (ops.py)."""
