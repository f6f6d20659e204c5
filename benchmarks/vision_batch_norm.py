"""Issue 24.6's diagnosis: how far a trainable EfficientNet's training-mode features are from its evaluation-mode ones.

With `batch_norm: batch` (encoders written before issue 24.6) every BatchNorm of the network normalises a training
batch with that batch's own statistics, so the image tokens a training step sees differ from those evaluation sees;
with `batch_norm: running` (fresh encoders now) BatchNorm keeps its stored ImageNet statistics in training too.
This prints the relative L2 distance between the two modes' image tokens, for each setting, on a batch of the
synthetic pictures `pmmrec data movielens --images synthetic` draws (random titles and MovieLens genres, seeded).

    python benchmarks/vision_batch_norm.py [--batch 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from pmmrec.components.vision_efficientnet import EfficientNetEncoder
from pmmrec.data.synthetic_images import GENRE_COLOURS, render_synthetic_image


def pictures(batch: int, seed: int) -> list[np.ndarray]:
    """`batch` synthetic pictures of 1 to 3 genres each, drawn from the genres the picture renderer colours."""
    rng = random.Random(seed)
    genres = sorted(GENRE_COLOURS)
    return [
        render_synthetic_image(f"item{index}", f"Film {index}", rng.sample(genres, rng.randint(1, 3)))
        for index in range(batch)
    ]


def relative_gap(batch_norm: str, pixels: torch.Tensor, seed: int) -> float:
    """||train-mode tokens - eval-mode tokens|| / ||eval-mode tokens|| for a fresh packaged encoder."""
    torch.manual_seed(seed)
    encoder = EfficientNetEncoder.from_backbone()
    encoder.config = encoder.config.model_copy(update={"batch_norm": batch_norm})
    params = encoder.backbone._global_params  # stochastic depth off: the gap is BatchNorm's alone
    encoder.backbone._global_params = params._replace(drop_connect_rate=0.0)
    with torch.no_grad():
        evaluated = encoder.eval()(pixels)
        trained = encoder.train()(pixels)
    return float((trained - evaluated).norm() / evaluated.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="pictures in the batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    encoder = EfficientNetEncoder.from_backbone()
    pixels = encoder.preprocessor(pictures(args.batch, args.seed))
    print(f"{args.batch} synthetic pictures, efficientnet-lite0 (packaged ImageNet weights), top 2 blocks trainable")
    for batch_norm in ("batch", "running"):
        gap = relative_gap(batch_norm, pixels, args.seed)
        print(f"batch_norm={batch_norm:8s} relative L2 distance, training-mode vs evaluation-mode tokens: {gap:.1%}")


if __name__ == "__main__":
    main()
