"""DVC stages of the rare-species family classifier: one module per stage plus shared helpers."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) buries the stages' own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
