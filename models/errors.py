"""Errors of model construction that name the user's input (no torch import: the CLI catches them)."""


class BackboneError(ValueError):
    """A backbone cannot be built: unknown name or layer, missing or mismatching weights file."""

    exit_code = 2
