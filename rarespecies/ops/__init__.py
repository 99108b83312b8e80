"""Layer 6, what the Prefect flows drive (without Prefect): DVC's pipeline and run cache,
sweeps and promotion."""
