"""Layer 4 (Keras): backbones, heads, training, checkpoints, features and evaluation."""
