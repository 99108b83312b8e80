"""Layer 3: data layouts, ingest, the Great Expectations suite, split, model-size arrays, and
acquisition (in `acquire`)."""
