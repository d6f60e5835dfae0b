"""The error type for bad input: the command line prints its message, without a traceback, and exits with 2."""


class UserError(ValueError):
    """Bad input from the user (a file, an option, a configuration). The message says which and what to do."""
