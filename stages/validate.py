"""Stage `validate`: the Great Expectations suites over the ingest manifest; with
`validate.strict` a failed expectation stops the pipeline, otherwise it is a warning."""

from __future__ import annotations

import typer

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.data.validate import describe_failures, validate_files


def work() -> str:
    """Validate with the `validate` keys of params.yaml."""
    p = load_params().validate_
    report = validate_files(paths.MANIFEST, paths.VALIDATION_REPORT, paths.VALIDATION_DOCS,
                            min_side=p.min_side, max_side=p.max_side,
                            min_images_per_class=p.min_images_per_class,
                            max_class_imbalance=p.max_class_imbalance, strict=p.strict)
    stats = report["statistics"]
    if report["success"]:
        return (f"all {stats['evaluated']} expectations passed on {stats['rows']} images "
                f"in {stats['classes']} classes (imbalance {stats['imbalance_ratio']})")
    typer.echo(f"validate: warning: {stats['failed']} of {stats['evaluated']} expectations "
               f"failed ({paths.VALIDATION_REPORT}):\n{describe_failures(report)}", err=True)
    return (f"{stats['failed']} of {stats['evaluated']} expectations failed; continuing "
            "(validate.strict is false)")


def main(debug: Debug = False) -> None:
    """Check the manifest against the suites in rarespecies/data/expectations/."""
    run_stage("validate", work, debug)


if __name__ == "__main__":
    run_command(main)
