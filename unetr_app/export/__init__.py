"""Exchange with other tools: MONAI bundles and weights, TorchScript, ONNX."""
