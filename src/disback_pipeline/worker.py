"""Join the data-parallel stages of a run led by another machine.

    python -m disback_pipeline.worker --endpoint node001:29400 --nproc-per-node 8

Run it on each other machine, in a copy of the project (the same installed code, and the same files at
``data.path``), while the primary runs ``kedro run ... --params distributed.nnodes=N,distributed.endpoint=
node001:29400``. The worker connects to the primary's endpoint (waiting up to ``--wait`` seconds for it to
listen), serves every stage the run starts on several machines (teacher pre-training, stage 1, stage 2) with
``--nproc-per-node`` ranks, and exits when the run ends: 0 when it finished, 1 when a stage failed or the
primary went away mid-stage. It writes nothing: the primary alone writes the catalog, MLflow and DVC files.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from datetime import timedelta

import torch.distributed as dist

from .diffusion.distributed import DONE_KEY, STAGE_KEY, MachinesError, join_stage, split_endpoint

log = logging.getLogger("disback_pipeline.worker")


def connect(endpoint: str, wait_s: float):
    """A client of the primary's store, retried until it listens or ``wait_s`` has passed."""
    host, port = split_endpoint(endpoint)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=5):  # listening? (the store's own retries are loud)
                pass
            return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=10))
        except Exception as exc:  # not listening yet
            if time.monotonic() > deadline:
                raise MachinesError(f"no primary listened at {endpoint} within {wait_s:g} s ({exc}); start the "
                                    "`kedro run` with distributed.endpoint set to this address") from None
            time.sleep(1.0)


def serve(endpoint: str, nproc: int, wait_s: float, poll_s: float = 0.5) -> int:
    store = connect(endpoint, wait_s)
    log.info("connected to the primary at %s", endpoint)
    served: set[str] = set()
    while True:
        try:
            if store.check([DONE_KEY]):
                status = store.get(DONE_KEY).decode()
                log.info("the run ended: %s", status)
                return 0 if status == "FINISHED" else 1
            stage = store.get(STAGE_KEY).decode() if store.check([STAGE_KEY]) else None
        except Exception as exc:  # the store closed: the primary's process has ended
            log.info("the primary at %s has gone (%s)", endpoint, exc)
            return 0
        if stage is not None and stage not in served:
            served.add(stage)
            try:
                join_stage(store, endpoint, stage, nproc)
            except Exception as exc:
                log.error("stage %s failed: %s", stage[:8], exc)
                return 1
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m disback_pipeline.worker", description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True, help="HOST:PORT of the primary (its distributed.endpoint)")
    ap.add_argument("--nproc-per-node", type=int, default=1, help="ranks on this machine (one GPU each on CUDA)")
    ap.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the primary to listen")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.nproc_per_node < 1:
        ap.error(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    try:
        return serve(args.endpoint, args.nproc_per_node, args.wait)
    except MachinesError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
