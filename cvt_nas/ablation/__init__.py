"""The ablation stage: experiment files (`experiment`), the runner that trains every
(row, seed) pair as an Optuna grid study (`runner`), and the paper-style tables (`table`).
"""
