"""Write an image folder of random RGB crops of the photographs that ship inside installed packages.

    python -m disback_pipeline.crops data/01_raw/crops16 --resolution 16 --train 2000 --heldout 500

The photographs: scikit-image's RGB photos (astronaut, chelsea, coffee, hubble_deep_field, ihc,
motorcycle_left, retina, rocket) and scikit-learn's two sample images (china, flower), read from the installed
wheels, never from the network. Each crop takes a random square (its side a random share, ``--scale``, of the
photo's short side, at a random position), is flipped left-right with probability 1/2 and resized to
``--resolution`` pixels with a box filter. ``OUT/train/<photo>/`` holds the training crops and
``OUT/heldout/<photo>/`` crops from another seed's stream for the reference statistics; the sub-folders are the
class labels of the domain extractor. The same arguments write the same files (``OUT/crops.json`` records them).

The set stands in for a user's own image folder: point ``data.path`` at any folder of images (sub-folders as
labels) and ``evaluation.reference_path`` at held-out images of the same kind.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("disback_pipeline.crops")

# (package, file in the package's data folder): the RGB photographs of the two wheels
PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "ihc": ("skimage", "data/ihc.png"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}
# seeds of the two streams: held-out crops never repeat a training crop's draw
HELDOUT_SEED_OFFSET = 1_000_003


def photo_path(name: str) -> Path:
    """The photograph's file inside its installed package (found without importing the package)."""
    package, rel = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"photo {name!r} ships with the package {package}, which is not installed; "
                                f"install it (`pip install -r requirements.txt`) or drop {name} with --photos")
    path = Path(spec.origin).parent / rel
    if not path.is_file():
        raise FileNotFoundError(f"photo {name!r}: {path} is missing from the installed {package}; reinstall it")
    return path


def random_crops(photo: Image.Image, n: int, resolution: int, scale: tuple[float, float],
                 rng: np.random.Generator) -> list[Image.Image]:
    """``n`` square crops of ``photo``: side ``u * short side`` with u uniform in ``scale``, position uniform,
    a left-right flip with probability 1/2, resized to ``resolution`` with a box filter."""
    w, h = photo.size
    out = []
    for _ in range(n):
        side = max(resolution, round(rng.uniform(*scale) * min(w, h)))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(crop.resize((resolution, resolution), Image.Resampling.BOX))
    return out


def write_crops(out: str | Path, resolution: int, train: int, heldout: int, seed: int = 0,
                scale: tuple[float, float] = (0.15, 0.5), photos: list[str] | None = None) -> dict:
    """Write ``train`` and ``heldout`` crops per photo under ``out`` (replacing what a previous call wrote there)
    and return the record written to ``out/crops.json``."""
    photos = list(PHOTOS) if photos is None else photos
    unknown = sorted(set(photos) - set(PHOTOS))
    if unknown:
        raise ValueError(f"unknown photo(s) {unknown}; choose from {sorted(PHOTOS)}")
    if resolution < 4 or train < 1 or heldout < 0:
        raise ValueError(f"need resolution >= 4, train >= 1 and heldout >= 0; got {resolution}, {train}, {heldout}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"--scale needs 0 < low <= high <= 1, got {scale}")
    images = {name: Image.open(photo_path(name)).convert("RGB") for name in photos}
    out = Path(out)
    for split in ("train", "heldout"):  # only the folders this command owns are replaced
        shutil.rmtree(out / split, ignore_errors=True)
    for index, (name, photo) in enumerate(images.items()):
        for split, n, offset in (("train", train, 0), ("heldout", heldout, HELDOUT_SEED_OFFSET)):
            rng = np.random.default_rng([seed + offset, index])
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(random_crops(photo, n, resolution, scale, rng)):
                crop.save(folder / f"{i:06d}.png")
    record = {"resolution": resolution, "train_per_photo": train, "heldout_per_photo": heldout, "seed": seed,
              "scale": list(scale), "photos": {name: f"{PHOTOS[name][0]}:{PHOTOS[name][1]}" for name in photos}}
    (out / "crops.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m disback_pipeline.crops", description=__doc__.split("\n")[0])
    ap.add_argument("out", help="folder to write (train/ and heldout/ inside it are replaced)")
    ap.add_argument("--resolution", type=int, default=16, help="side of each crop (pixels)")
    ap.add_argument("--train", type=int, default=2000, help="training crops per photo (count)")
    ap.add_argument("--heldout", type=int, default=500, help="held-out crops per photo (count)")
    ap.add_argument("--seed", type=int, default=0, help="integer seed of the crop positions, scales and flips")
    ap.add_argument("--scale", type=float, nargs=2, default=(0.15, 0.5), metavar=("LOW", "HIGH"),
                    help="crop side as a share of the photo's short side, drawn uniformly in [LOW, HIGH]")
    ap.add_argument("--photos", default=",".join(PHOTOS), help="comma-separated photos to crop")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        record = write_crops(args.out, args.resolution, args.train, args.heldout, args.seed, tuple(args.scale),
                             [p for p in args.photos.split(",") if p])
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    n = len(record["photos"])
    log.info("%d photos -> %s: %d training and %d held-out crops of %d px", n, args.out, n * args.train,
             n * args.heldout, args.resolution)
    return 0


if __name__ == "__main__":
    sys.exit(main())
