"""Would bfloat16 speed up the frozen backbone's forward pass on this CPU? Ratios, one process.

For each end-to-end model of params.yaml, its backbone is built twice at its size, with the same
weights: under Keras' default float32 policy and under `mixed_bfloat16` (variables float32,
computation bfloat16; the CPU's AVX512_BF16 when oneDNN uses it). Each round times one forward
pass of a batch of the model's `batch_size` images through each (inference mode, a traced
`tf.function`, warmed up first), the two interleaved. Prints the medians, the float32/bfloat16
ratio and how far the bfloat16 features are from the float32 ones.

    python benchmarks/mixed_precision.py [--models densenet121,inception_resnet_v2] [--rounds 3]
"""

from __future__ import annotations

import statistics
import time
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    models: Annotated[str, typer.Option(help="comma-separated end-to-end models")] =
        "densenet121,inception_resnet_v2",
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds (median reported)")] = 3,
) -> None:
    """Print, per model, the forward time of a batch in float32 and in mixed_bfloat16."""
    import keras
    import numpy as np
    import tensorflow as tf

    from rarespecies.config.params import load_params
    from rarespecies.modeling.models import build_backbone_model

    params = load_params()
    print("| model | input px | batch | float32 s | mixed_bfloat16 s | float32 / bf16 | "
          "max abs feature diff (feature std) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in models.split(","):
        settings, backbone = params.model(name), params.backbone_of(name)
        nets = {}
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.set_random_seed(backbone.seed)
            nets[policy] = build_backbone_model(backbone)
        keras.mixed_precision.set_global_policy("float32")
        nets["mixed_bfloat16"].set_weights(nets["float32"].get_weights())
        size, batch = backbone.input_size, settings.training.batch_size
        images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3))
                             .astype(np.float32))
        forward = {policy: tf.function(lambda x, net=net: net(x, training=False))
                   for policy, net in nets.items()}
        outputs = {policy: np.asarray(f(images), np.float32) for policy, f in forward.items()}
        times: dict[str, list[float]] = {policy: [] for policy in forward}
        for _ in range(rounds):
            for policy, f in forward.items():
                start = time.perf_counter()
                f(images).numpy()
                times[policy].append(time.perf_counter() - start)
        fp32, bf16 = (statistics.median(times[p]) for p in ("float32", "mixed_bfloat16"))
        diff = float(np.abs(outputs["float32"] - outputs["mixed_bfloat16"]).max())
        print(f"| {name} | {size} | {batch} | {fp32:.2f} | {bf16:.2f} | {fp32 / bf16:.2f}x | "
              f"{diff:.3g} ({float(outputs['float32'].std()):.3g}) |")


if __name__ == "__main__":
    app()
