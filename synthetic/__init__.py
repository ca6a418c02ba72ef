"""The synthetic fine-grained world shared by the default run's training data (`train/`) and benchmarks (`eval/`)."""
