"""The error of the training loop."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why."""
