"""Comparative research runs (`sweep.py`): a grid of configurations × seeds, run as
ordinary tapefit run directories, resumable and shardable, reported with intervals
and paired differences to a baseline."""
