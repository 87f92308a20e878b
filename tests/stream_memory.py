"""Run by tests/test_streaming.py in a fresh process: the reference statistics of the first ``n`` images of a
streamed folder (0 = all) and 50 teacher pre-training steps; prints the peak resident memory (JSON)."""

from __future__ import annotations

import json
import resource
import sys

import torch

from disback_pipeline.diffusion.data import open_image_folder
from disback_pipeline.diffusion.teacher import pretrain_teacher
from disback_pipeline.evaluation.features import DomainClassifier, FeatureSpec
from disback_pipeline.pipelines.reference.nodes import build_reference_stats


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(folder: str, resolution: int, n_reference: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    source = open_image_folder(folder, resolution)
    net = DomainClassifier(3, source.num_classes)
    features = FeatureSpec("domain", net, {"in_channels": 3, "num_classes": source.num_classes}, 0.0)
    data = {"source": "image_folder", "path": folder, "resolution": resolution, "workers": 2}
    stats = build_reference_stats(features, data, {"reference_samples": n_reference})
    unet = {"backbone": "unet", "sigma_data": 0.5, "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
            "attn_resolutions": [], "dropout": 0.0}
    pretrain_teacher(source, unet, {"steps": 50, "batch_size": 32, "log_every": 0, "warmup_steps": 1}, seed=0,
                     device="cpu")
    sys.stdout.write(json.dumps({"images": len(source), "reference_n": int(stats["n"]), "peak_mb": peak_mb(),
                      "float32_mb_per_image": 3 * resolution * resolution * 4 / 2**20}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
