"""Errors whose message tells the user what is wrong and how to fix it (printed without a traceback).

Every error class of the package is here, so that any layer can raise or catch one without importing
the module that usually raises it. Each is a ``UserError`` (but ``ImageError``, which the data
modules handle themselves): the command lines print its one-line message and exit with code 2.
"""


class UserError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


# ---------------------------------------------------------------------- configuration, files
class ConfigError(UserError):
    """A configuration value, key, folder or checkpoint is unusable, or ``anogan.fit`` could not
    compose the configuration from the overrides given (Hydra's reason); the message names it and the fix."""


class SweepConfigError(UserError):
    """A sweep-related config value (optimized_metric, threads) that cannot work."""


class RunFolderError(UserError):
    """The output folder holds another or a finished run; the message names the choices."""


class WriteError(UserError):
    """A file could not be written (disk full, read-only folder, ...); the previous version is intact."""


class GANLoadError(UserError):
    """A checkpoint or weight file is missing, unreadable or does not fit the configured model."""


class ArtifactError(UserError):
    """The scorer file is missing, unreadable, not an anogan scorer, or not what this version expects."""


# ---------------------------------------------------------------------- data
class DataError(UserError):
    """Data cannot be loaded as configured; the message says how to fix it."""


class ImageError(Exception):
    """One file cannot be used as an image; ``str(err)`` is the reason. Not a ``UserError``: the data
    modules skip the file (listing it in ``splits.json`` with the reason) and go on with the rest."""


# ---------------------------------------------------------------------- training, scoring
class DivergenceError(UserError, FloatingPointError):
    """Training stopped because a loss diverged or D saturated; the message says what is kept."""


class ScoreDivergenceError(UserError, FloatingPointError):
    """A NaN/inf anomaly score: scoring stops, since every metric would be meaningless."""


# ---------------------------------------------------------------------- metrics and statistics
class OneClassSplitError(UserError):
    """A split holds a single class, so a threshold or a ranking metric is undefined."""


class ThresholdRuleError(UserError):
    """``threshold=`` names no known rule, or a rule this run could not fit."""


class CalibrationError(UserError):
    """No normal images to calibrate p-values or the false-positive-rate threshold on."""


class MaskError(UserError):
    """Maps and masks that cannot be scored (shapes differ, no defect pixel, no normal pixel)."""


class CompareError(UserError):
    """The two runs cannot be compared (missing file, other images, one class)."""


# ---------------------------------------------------------------------- using a trained scorer
class InputError(UserError):
    """An input that cannot be scored (wrong type, shape, dtype or range; a missing or unreadable
    file), or a setting that cannot be used; the message names it and says how to fix it."""


class PredictError(UserError):
    """The command line or the scorer file cannot be used; the message says how to fix it."""


class ExportError(UserError):
    """The scorer cannot be exported, or the exported graph does not reproduce PyTorch."""


class ServeError(UserError):
    """The command line or the scorer file cannot be used; the message says how to fix it."""


def user_error_in(err: BaseException) -> UserError | None:
    """The ``UserError`` behind ``err``, following ``__cause__`` (Hydra's ``instantiate`` wraps an
    error raised by the target it builds in an ``InstantiationException`` whose cause it is); None
    when there is none."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None
