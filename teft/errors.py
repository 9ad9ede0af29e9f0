"""One error type for mistakes a user can make, so entry points print one line instead of a traceback."""


class TeftError(ValueError):
    """A problem with the user's input (path, model, map, data), with the fix in its message."""
