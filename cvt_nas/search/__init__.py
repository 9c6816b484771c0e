"""The search stage: one trial (`trial`), the study that stores a search (`study`), the
Optuna and Ray Tune backends and the multi-fidelity rungs. Backends only translate the space into
their own vocabulary and call `cvt_nas.search.trial.evaluate`.
"""
