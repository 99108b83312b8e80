"""Prefect flows that drive the DVC pipeline."""
