"""Selection of the best checkpoints, their fusion, metrics, reports and prediction."""
