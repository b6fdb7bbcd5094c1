"""Everything a trial runs: data, augmentation, models, the training engine, the Trainable."""
