"""The training stage: `TrainConfig` and recipes, datasets, augmentation, checkpoints and the
trainer (`run_trial`). `config` is torch-free; the rest imports torch.
"""
