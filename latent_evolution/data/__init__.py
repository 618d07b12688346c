"""Recordings and their splits: the split interface (split), resident and streamed splits,
batches, the x_list_0.npy folder format, the kept-columns cache, the embedded simulator, and
loading a data set (dataset)."""
