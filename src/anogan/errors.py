"""Errors whose message tells the user what is wrong and how to fix it (printed without a traceback)."""


class UserError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class DataError(UserError):
    """Data cannot be loaded as configured; the message says how to fix it."""


class ImageError(Exception):
    """One file cannot be used as an image; ``str(err)`` is the reason. Not a ``UserError``: the data
    modules skip the file (listing it in ``splits.json`` with the reason) and go on with the rest."""
