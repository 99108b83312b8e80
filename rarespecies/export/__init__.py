"""Layer 5: the shipped model, from choice to ONNX, INT8, benchmark and model card."""
