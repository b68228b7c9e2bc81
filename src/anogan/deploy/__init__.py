"""A finished run in use: the ``scorer.pt`` file, the Python API's Detector, ONNX export and the server."""
