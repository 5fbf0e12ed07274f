"""Inputs and stores: readers of every input format, the simulator, the crop store, torch Datasets."""
