"""Pipeline overhead: the same backtracking training with and without Kedro + MLflow.

    python benchmarks/overhead.py --env toy2d --repeats 3

Needs the env's teacher, path and reference artifacts (run `kedro run --pipelines=distill --env ENV`
first). Each repeat times (a) ``kedro run --pipelines=backtracking`` in-process through a
KedroSession with kedro-mlflow tracking to a throwaway sqlite store, and (b) the node function
called directly with the same inputs and MLflow off; medians and their ratio are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="toy2d")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    for k, v in {"KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        os.environ.setdefault(k, v)
    from kedro.framework.project import configure_project
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    configure_project("disback_pipeline")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        with KedroSession.create(project_path=ROOT, env=args.env) as session:
            context = session.load_context()
            catalog = context.catalog
            params = context.config_loader["parameters"]
        inputs = [catalog.load(n) for n in ("teacher_model", "degradation_path", "feature_extractor",
                                            "reference_stats")]
        from disback_pipeline.pipelines.backtracking.nodes import distill_generator

        kedro_s, plain_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            with KedroSession.create(project_path=ROOT, env=args.env) as session:
                session.run(pipeline_names=["backtracking"])
            kedro_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            distill_generator(*inputs, params["data"], params["backtracking"], params["shared"],
                              {**params["checkpointing"], "resume": "never"})
            plain_s.append(time.perf_counter() - t)
    out = {"env": args.env, "repeats": args.repeats, "kedro_mlflow_median_s": statistics.median(kedro_s),
           "plain_median_s": statistics.median(plain_s),
           "overhead_ratio": statistics.median(kedro_s) / statistics.median(plain_s), "kedro_s": kedro_s,
           "plain_s": plain_s}
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
