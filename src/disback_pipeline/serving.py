"""The distilled student as an MLflow model: ``predict([{"n", "seed", "class"}])`` returns samples.

Logged by the evaluation stage through kedro-mlflow's model dataset (``student_model`` in the
catalog) and registered under ``<data>-<method>-<loss>`` with the run's headline quality, the loss,
the method and the teacher's hash as version tags. ``predict`` is typed (a list of :class:`Request`), so
MLflow infers the model's signature and checks every request against it. Load a version from Python:

    import mlflow
    model = mlflow.pyfunc.load_model("models:/digits-disback-di/latest")
    images = model.predict([{"n": 16, "seed": 0}])        # (16, 1, 8, 8) float32 in [-1, 1]
"""

from __future__ import annotations

import mlflow
import numpy as np
import pydantic


class Request(pydantic.BaseModel):
    """One request: ``n`` samples from seeds ``seed`` ... ``seed + n - 1``, of class ``class`` (conditional
    models; absent = each seed draws its class)."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)

    n: int = pydantic.Field(1, ge=1)
    seed: int = pydantic.Field(0, ge=0)
    class_label: int | None = pydantic.Field(None, alias="class", ge=0)


class StudentModel(mlflow.pyfunc.PythonModel):
    """One-step samples of a distilled generator; sample i comes from seed ``seed + i`` alone (as the
    generate command draws it). Several requests give their samples one after the other."""

    def load_context(self, context) -> None:
        from .diffusion.checkpoint import load_checkpoint

        self.checkpoint = load_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: list[Request], params=None) -> np.ndarray:
        from .evaluation.samples import check_class, draw

        out = []
        for request in model_input:
            request = request if isinstance(request, Request) else Request.model_validate(request)
            check_class(self.checkpoint, request.class_label)
            seeds = list(range(request.seed, request.seed + request.n))
            out += [x.numpy() for x in draw(self.checkpoint, seeds, 256, request.class_label)]
        return np.concatenate(out)


def register_logged_model(name: str, tags: dict[str, str]):
    """Register the model this run logged last under ``name``, with ``tags`` on the new version."""
    logged = mlflow.last_logged_model()
    if logged is None:
        raise RuntimeError("no model was logged in this run; the student_model dataset saves it first")
    version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags)
    return {"name": name, "version": int(version.version), "model_id": logged.model_id, "tags": tags}
