"""Entry points: each command's ``main`` (``anogan train|predict|export|serve|compare|report|sweep-summary``)."""
