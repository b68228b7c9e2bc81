"""The typed config schema, its checks and command-line parsing; imports nothing else of the package."""
