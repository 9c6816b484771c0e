"""The training stage: `TrainConfig` and recipes, the dataset table and `adapt_config`
(`datasets`), per-epoch seeds, data loading, augmentation, checkpoints and the trainer
(`run_trial`). `config`, `datasets` and `seeds` are torch-free; the rest imports torch.
"""
