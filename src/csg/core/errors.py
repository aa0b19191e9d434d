"""The one exception type a user sees as a single line."""


class CsgError(Exception):
    """Bad input or a failed precondition, explained in one line.

    The message names the thing that is wrong and the fix. The CLI prints
    ``csg: error: <message>`` and exits with status 2, without a traceback.
    """
