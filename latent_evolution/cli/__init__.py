"""The four commands (train, compare, status, evaluate) and the one-line error wrapper they
share (errors)."""
