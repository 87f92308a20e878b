"""Project hooks: every stage's settings are checked when a run starts, before anything trains."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from .diffusion.config import validate_parameters

log = logging.getLogger(__name__)


class ValidateParameters:
    """Build each stage's typed configuration from the run's parameters (``--params`` included).

    A misspelt or out-of-range key fails here, within seconds, naming the key and the nearest valid
    one, instead of surfacing after the teacher has trained.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        built = validate_parameters(context.params)
        log.info("parameters checked: %s", ", ".join(built))
