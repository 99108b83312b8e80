"""Stage `tf_baseline`: Keras `model.predict` and `tf.function` timed on the exported
architecture, once per architecture (the benchmark stage reads the figures)."""

from __future__ import annotations

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.export.baseline import run_tf_baseline


def work() -> str:
    """Time TensorFlow with the `benchmark` keys of params.yaml."""
    figures = run_tf_baseline(paths.TIMED_ARCHITECTURE, load_params().benchmark,
                              paths.TF_BASELINE)
    return (f"model.predict {figures['keras_predict']['p50_ms']} ms, tf.function "
            f"{figures['keras_tf_function']['p50_ms']} ms p50 at batch 1; "
            f"figures in {paths.TF_BASELINE}")


def main(debug: Debug = False) -> None:
    """Time the TensorFlow baseline of the exported architecture."""
    run_stage("tf_baseline", work, debug)


if __name__ == "__main__":
    run_command(main)
