"""Errors whose message tells the user what is wrong and how to fix it (printed without a traceback)."""


class UserError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class OneClassSplitError(UserError):
    """A split holds a single class, so a threshold or a ranking metric is undefined."""


class ThresholdRuleError(UserError):
    """``threshold=`` names no known rule, or a rule this run could not fit."""


class CalibrationError(UserError):
    """No normal images to calibrate p-values or the false-positive-rate threshold on."""
