"""Fitted on validation, kept with the model: calibration, score corrections, thresholds."""
