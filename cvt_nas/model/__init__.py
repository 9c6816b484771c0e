"""The model stage: `CvTConfig`, presets, the network, its layers, cost counting and weights.

Torch-free on import: `config`, `presets`, `cost` and `profiling` load no torch; `network`,
`layers`, `linear`, `fvcore_count` and `weights` do, and are imported on first use.
"""
