"""Convert an EDM snapshot pickle to a disback checkpoint without executing its code.

    python -m disback_pipeline.import_edm IN.pkl OUT.pt [--check IO.pt] [--network ema]

With ``--check`` the converted network is run on a parity file's stored inputs
(``x``, ``sigma``, optional ``class_labels``) and compared with its
``denoised``; the command exits 1 when the max abs error exceeds 1e-4. A
pickle that names a global outside the allow-list exits 2 with that global's name.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .diffusion.checkpoint import save_checkpoint
from .diffusion.edm_import import UnsafePickleError, load_edm_snapshot, parity_error

log = logging.getLogger("disback_pipeline.import_edm")

TOLERANCE = 1e-4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disback_pipeline.import_edm", description=__doc__.split("\n")[0])
    parser.add_argument("snapshot", help="EDM network-snapshot-*.pkl")
    parser.add_argument("output", help="disback checkpoint to write (.pt)")
    parser.add_argument("--check", metavar="IO.pt", help="parity file with x, sigma, class_labels, denoised")
    parser.add_argument("--network", default="ema", help="snapshot key of the network (default: ema)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ckpt = load_edm_snapshot(args.snapshot, args.network)
    except UnsafePickleError as exc:
        log.error("refused %s: %s", args.snapshot, exc)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        log.error("cannot import %s: %s", args.snapshot, exc)
        return 2
    save_checkpoint(ckpt, args.output)
    n_params = sum(p.numel() for p in ckpt.net.parameters())
    log.info("wrote %s (%s, %d parameters)", args.output, ckpt.config["backbone"], n_params)
    if args.check:
        err = parity_error(ckpt.net, args.check)
        log.info("max abs error on %s: %.3g (tolerance %.0e)", args.check, err, TOLERANCE)
        if not err <= TOLERANCE:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
