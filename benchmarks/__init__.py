"""Readers of the public labelled benchmarks (``../shared/datasets``): the bottom layer under
``training`` and ``evaluation``. See ``benchmarks.datasets``."""
