"""The training run: the loop and its compiled step (trainer), checkpoints, the learning-rate
schedule, early stopping, warning signals, loggers, the GPU monitor and the final metrics."""
