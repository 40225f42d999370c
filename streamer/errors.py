"""Errors with a one-line message for the user and the exit code the CLI returns."""


class StreamerError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 1


class UsageError(StreamerError):
    """Bad usage or bad input (missing file, not a video, bad option): exit code 2."""

    exit_code = 2


class ProcessingError(StreamerError):
    """Something failed while processing: exit code 1."""

    exit_code = 1
