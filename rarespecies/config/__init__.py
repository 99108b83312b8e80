"""Layer 2: typed `params.yaml` settings, every artifact path, and what dvc.yaml must declare."""
