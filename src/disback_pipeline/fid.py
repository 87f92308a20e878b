"""FID of any folder of images or .npz against our reference statistics.

    python -m disback_pipeline.fid samples.npz                      # the default run's files
    python -m disback_pipeline.fid samples/ --reference data/base/05_model_input/reference_stats.npz \
        --extractor data/base/06_models/feature_extractor.pt --out fid.json
    python -m disback_pipeline.fid samples/ --inception data/01_raw/inception-2015-12-05.pt --mode legacy_tensorflow \
        --reference my_inception_stats.npz

Features come from the extractor the reference pipeline saved (the domain classifier, or the
Inception file it names), or from ``--inception`` (a local clean-fid Inception file; nothing is
downloaded). Prints, and with ``--out`` writes, the same record as metrics.json: fid, extractor,
mode, n_samples, reference_hash. The reference statistics must come from the same extractor.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("disback_pipeline.fid")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m disback_pipeline.fid", description=__doc__.split("\n")[0])
    ap.add_argument("samples", help="a folder of .png/.jpg images or an .npz (arr_0: uint8 NHWC)")
    ap.add_argument("--reference", default="data/base/05_model_input/reference_stats.npz",
                    help="reference statistics (.npz with mu, sigma, n, hash) from the reference pipeline "
                         "(the base environment's; data/<env>/05_model_input/ for another)")
    ap.add_argument("--extractor", default="data/base/06_models/feature_extractor.pt",
                    help="the feature extractor the reference pipeline saved")
    ap.add_argument("--inception", default=None, help="use this local Inception file instead of --extractor")
    ap.add_argument("--mode", default="clean", choices=("clean", "legacy_tensorflow"), help="with --inception")
    ap.add_argument("--out", default=None, help="write the record as JSON here too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .datasets import FeatureExtractorDataset, NpzDataset
    from .diffusion.checkpoint import CheckpointError
    from .evaluation.features import FeatureSpec
    from .evaluation.quality import fid_against
    from .evaluation.samples import read_images

    try:
        images = read_images(args.samples)
        if not Path(args.reference).is_file():
            raise FileNotFoundError(f"{args.reference} does not exist; run `kedro run --pipelines=reference` "
                                    "(or pass --reference)")
        reference = NpzDataset(args.reference).load()
        features = FeatureSpec("inception", inception_path=args.inception, mode=args.mode) if args.inception \
            else FeatureExtractorDataset(args.extractor).load()
        feats = features.extract(images)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    if feats.shape[1] != len(reference["mu"]):
        log.error("%s holds statistics of %d-dimensional features, but the extractor gives %d: use the extractor "
                  "the reference statistics were computed with", args.reference, len(reference["mu"]),
                  feats.shape[1])
        return 2
    record = {"fid": fid_against(reference, feats), "extractor": features.label,
              "mode": features.mode if features.kind == "inception" else "features", "n_samples": len(images),
              "reference_hash": str(reference["hash"]), "samples": str(args.samples)}
    text = json.dumps(record, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
