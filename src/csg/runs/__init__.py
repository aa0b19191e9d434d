"""The runs layer: the run directory, rebuilding a model from a run, and evaluation."""
