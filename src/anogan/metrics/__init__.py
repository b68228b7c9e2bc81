"""Image and pixel metrics, statistics (bootstrap intervals, DeLong) and run comparisons."""
