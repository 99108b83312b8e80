"""rarespecies: a family-level classifier for photos of rare animals, as a DVC + Prefect pipeline.

Layers, each importing only from the ones before it (tests/test_layout.py checks it):
core → runtime → config → data → modeling → export → ops → cli.
"""
