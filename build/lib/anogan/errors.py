"""Errors whose message tells the user what is wrong and how to fix it (printed without a traceback)."""


class UserError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""
