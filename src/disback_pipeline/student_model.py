"""The student's MLflow model, defined as code: MLflow copies this file into the logged model and runs it when
the model is loaded (models from code), so nothing is pickled. The weights are the model's ``checkpoint``
artifact; the code is :class:`disback_pipeline.serving.StudentModel`."""

import mlflow

from disback_pipeline.serving import StudentModel

mlflow.models.set_model(StudentModel())
