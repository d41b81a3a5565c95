"""lidit-export reuses the runtime's error types, so both packages fail the same way at the boundary."""
from lidit_runtime.errors import ArtifactError, ConfigError, LiditError, ShapeError

__all__ = ["ArtifactError", "ConfigError", "LiditError", "ShapeError"]
