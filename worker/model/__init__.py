"""The model artifact (``.keras`` + ``model.onnx`` + ``manifest.json``) and its backends.

``default/`` is the bundled artifact.  No Kafka here, and nothing of training.
"""
