"""The toy source run's size (conftest.py), which its tests check."""
SOURCE_ITERS = 30
SIZE = (64, 80)
