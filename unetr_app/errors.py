"""Errors a user can act on. The CLI turns each into one line and an exit code (no traceback)."""


class UnetrError(Exception):
    """A problem with the user's input, data or configuration; the message says what and where."""

    exit_code = 1


class UsageError(UnetrError):
    """The command cannot run as asked (missing data, bad option or config): exit code 2."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A configuration file or override is invalid; the message names the key (a ValueError too)."""


class DataNotFoundError(UsageError):
    """The dataset is not where we looked; the message says where we looked and how to get it."""


class InputError(UnetrError):
    """One input file is unreadable or invalid; the message names the file and the problem."""


class CheckpointError(UnetrError):
    """A checkpoint is missing, unsafe to load or not one of ours."""
