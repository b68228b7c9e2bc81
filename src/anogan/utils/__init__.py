"""Utilities every layer may use: atomic file writes, errors, console and progress output."""
