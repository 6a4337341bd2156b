"""The one exception type for user errors: the CLI prints it as one line and exits non-zero.

Anything else that escapes a command is a bug and keeps its traceback.
"""


class PopeError(Exception):
    """A user error (bad file, bad field, impossible option), printed as one line.

    `exit_code` is 2 for bad options (as click does for usage errors) and 1 otherwise.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """Format a location as `path:line: field 'x'` for error messages."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if field is not None:
        text += f": field '{field}'"
    return text


class Interrupted(KeyboardInterrupt):
    """Ctrl-C with a stage's own word on what was kept and how to go on."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint
