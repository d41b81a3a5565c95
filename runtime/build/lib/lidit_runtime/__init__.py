"""lidit_runtime: a small runtime that chains exported LI-DiT stages. Never imports torch."""
from .errors import ArtifactError, ConfigError, LiditError, NonFiniteError, ShapeError
from .pipeline import GenerateRequest, GenerateResult, LatentGeometry, Pipeline, run_chain
from .sampler import SchedulerConfig, make_plan

__all__ = ["ArtifactError", "ConfigError", "LiditError", "NonFiniteError", "ShapeError", "GenerateRequest", "GenerateResult",
           "LatentGeometry", "Pipeline", "run_chain", "SchedulerConfig", "make_plan"]
__version__ = "0.1.0"
