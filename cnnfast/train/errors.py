"""The errors ``cnnfast train`` reports as one sentence (exit status 2) rather than a traceback."""


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read or does not fit the model."""


class UsageError(ValueError):
    """Options that do not go together."""


def _first_line(e: BaseException) -> str:
    """``e`` in one line, for the end of a sentence: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
