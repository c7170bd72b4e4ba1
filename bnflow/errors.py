"""Errors a user can act on: each message names what is wrong and what to do."""


class BnflowError(Exception):
    """Base class for errors reported to the user without a traceback."""


class ConfigError(BnflowError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range (the message names the key)."""


class DataError(BnflowError):
    """A dataset source is missing, corrupt or laid out wrongly (the message names the path and the fix)."""


class OutputExistsError(BnflowError):
    """A completed output already exists and would be overwritten."""
