"""The run-folder contract: file names, splits and statuses (folder), the metrics.json schema
(metrics), the durable epoch log (epoch_log) and reading run folders (reading). Standard
library and PyYAML only: every layer, the launchers and the torch-free commands use it."""
