"""Errors of model construction that name the user's input (no torch import: the CLI catches them)."""


class ModelInputError(ValueError):
    """A model cannot be built from what the user gave it; the message names the file or field."""

    exit_code = 2


class BackboneError(ModelInputError):
    """A backbone cannot be built: unknown name or layer, missing or mismatching weights file."""


class EarlierStageError(ModelInputError):
    """The checkpoint of an earlier training stage a model builds on is missing from the config, of the
    wrong stage, or does not fit (DSR's stage 1)."""
