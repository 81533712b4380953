"""The one error type of weight import and download, so CLIs can report it as one line."""


class WeightsError(ValueError):
    """A weight file that cannot be read safely, does not fit the architecture asked for, or
    cannot be downloaded."""
