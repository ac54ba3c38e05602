"""The error families mnistlab raises for people, one type per family.

Each message says what was wrong, where, and what to do; the CLI prints it as one line and exits
non-zero. Standard library only: every layer may import this module.
"""


class MnistlabError(Exception):
    """Base of every error mnistlab reports to a person (not a bug)."""

    exit_code = 1


class ConfigError(MnistlabError):
    """A setting is unknown, has the wrong type, or is out of range."""

    exit_code = 2


class DataError(MnistlabError):
    """A dataset file is missing, corrupt, or cannot be obtained."""


class CheckpointError(MnistlabError):
    """A checkpoint cannot be written, found, trusted or read."""


class TrainingError(MnistlabError):
    """Training cannot go on (for instance the loss became NaN)."""


class TrackingError(MnistlabError):
    """Metrics cannot be written, read, plotted or shown (metrics.jsonl, TensorBoard, plots)."""


class ParallelError(MnistlabError):
    """A parallel run cannot start or a worker failed."""


class ImageError(DataError):
    """An image cannot be read as a digit: not an image, too large, damaged (the server: 4xx)."""


class NoDigitError(ImageError):
    """An image was read but holds no digit: blank, or ink too small or too faint to be one.

    Said instead of guessing: a model asked about an empty canvas still names some class."""
