"""Model adapters (classifiers, captioners), loading models from names, files, import paths; ONNX import."""
