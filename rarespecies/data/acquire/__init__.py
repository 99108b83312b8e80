"""Filling data/: the synthetic sample, EOL downloads from a catalogue, the Hugging Face dataset,
and versioning the result with DVC."""
