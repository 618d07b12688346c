"""Sweep folders into tables and plots: comparison (compare), rendering (report) and the rows
of status (status). No torch, no Hydra."""
