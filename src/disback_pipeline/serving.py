"""The distilled student as an MLflow model: ``predict({"n", "seed", "class"})`` returns samples.

Logged by the evaluation stage through kedro-mlflow's model dataset (``student_model`` in the
catalog) and registered under ``<data>-<method>-<loss>`` with the run's headline quality, the loss,
the method and the teacher's hash as version tags. Load a version from Python:

    import mlflow
    model = mlflow.pyfunc.load_model("models:/digits-disback-di/latest")
    images = model.predict({"n": 16, "seed": 0})          # (16, 1, 8, 8) float32 in [-1, 1]
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np


def _request(model_input: Any) -> dict:
    """{n, seed, class} from a dict, a one-row DataFrame or a list holding one dict."""
    if hasattr(model_input, "to_dict"):  # a DataFrame, as `mlflow models predict` passes it
        rows = model_input.to_dict(orient="records")
        model_input = rows[0] if rows else {}
    elif isinstance(model_input, list):
        model_input = model_input[0] if model_input else {}
    request = dict(model_input)
    unknown = set(request) - {"n", "seed", "class"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; predict takes {{n, seed, class}}")
    cls = request.get("class")
    cls = None if cls is None or (isinstance(cls, float) and np.isnan(cls)) else int(cls)
    return {"n": int(request.get("n", 1)), "seed": int(request.get("seed", 0)), "class": cls}


class StudentModel(mlflow.pyfunc.PythonModel):
    """One-step samples of a distilled generator; sample i comes from seed ``seed + i`` alone (as the
    generate command draws it)."""

    def load_context(self, context) -> None:
        from .diffusion.checkpoint import load_checkpoint

        self.checkpoint = load_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        from .evaluation.samples import check_class, draw

        request = _request(model_input)
        if request["n"] < 1:
            raise ValueError(f"n must be >= 1, got {request['n']}")
        check_class(self.checkpoint, request["class"])
        seeds = list(range(request["seed"], request["seed"] + request["n"]))
        return np.concatenate([x.numpy() for x in draw(self.checkpoint, seeds, 256, request["class"])])


def register_logged_model(name: str, tags: dict[str, str]):
    """Register the model this run logged last under ``name``, with ``tags`` on the new version."""
    logged = mlflow.last_logged_model()
    if logged is None:
        raise RuntimeError("no model was logged in this run; the student_model dataset saves it first")
    version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags)
    return {"name": name, "version": int(version.version), "model_id": logged.model_id, "tags": tags}
