"""The one exception type the CLI turns into a single clear line (never a traceback)."""


class AugforgeError(Exception):
    """A user-facing failure: bad input, wrong model kind, NaN loss, ...

    The message must name the file or option at fault; the CLI prints it as one line
    (``error: <message>``) and exits with code 2.
    """
