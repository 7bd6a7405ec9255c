"""Base class for mistakes a user can fix: shown as one message, no traceback, exit code 2."""


class KeelError(Exception):
    """A user-facing error: bad config, bad data, unusable machine setting.

    The message names the value, what was expected and how to fix it. Entry points print
    it without a traceback and exit with status 2.
    """

    exit_code = 2
