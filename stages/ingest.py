"""Stage `ingest`: the data folder (course or Hugging Face layout) → normalized RGB images, the
manifest and `reports/ingest.json`, which accounts for every row and file."""

from __future__ import annotations

from pathlib import Path

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.data.ingest import ingest


def work() -> str:
    """Ingest with the `data` and `ingest` keys of params.yaml."""
    params = load_params()
    p = params.ingest
    report = ingest(Path(params.data.dir), paths.INGEST_IMAGES, paths.MANIFEST,
                    paths.INGEST_REPORT, max_side=p.max_side, max_pixels=p.max_pixels,
                    jpeg_quality=p.jpeg_quality, workers=p.workers)
    return (f"ingested {report['ingested']} images in {report['classes']} classes, "
            f"quarantined {report['quarantined']} (see {paths.INGEST_REPORT})")


def main(debug: Debug = False) -> None:
    """Normalize every listed image; quarantine, with its reason, what cannot be used."""
    run_stage("ingest", work, debug)


if __name__ == "__main__":
    run_command(main)
