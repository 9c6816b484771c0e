"""Search backends: thin adapters from a search space to Optuna or Ray Tune."""
