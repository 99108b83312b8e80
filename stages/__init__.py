"""DVC stages of the rare-species family classifier: one module per stage plus shared helpers."""
