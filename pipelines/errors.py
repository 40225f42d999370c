"""Errors raised by ``pipelines`` for things a user can fix (bad file, bad option)."""


class CheckpointError(ValueError):
    """A file that cannot be used as a model checkpoint; the message is one line for the user."""
