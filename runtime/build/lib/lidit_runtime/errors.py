"""Errors the runtime raises at its boundaries: one line, the value seen, the fix."""


class LiditError(Exception):
    """Base class: a problem with the user's input or files, not a bug. `field` names the option the message
    is about (a settings field or keyword argument); the command line shows its flag beside it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigError(LiditError):
    """A config field is missing or invalid."""


class ShapeError(LiditError):
    """An input shape (resolution, batch, prompt length) is not supported."""


class ArtifactError(LiditError):
    """A model folder, build folder or file is missing, corrupt or from another version."""


class NonFiniteError(LiditError):
    """A stage produced NaN or infinity (damaged weights, or numbers past the precision's range)."""
