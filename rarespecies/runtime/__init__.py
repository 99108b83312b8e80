"""Layer 1, the base install (onnxruntime, NumPy, Pillow): images, the ONNX session, prediction
and the one definition of every metric. Never imports TensorFlow, pandas, DVC or Prefect."""
