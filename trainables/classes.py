"""The data set's classes, in label order; importing this needs no torch (analysis/predict.py
answers bad input before it loads torch)."""

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
NUM_CLASSES = len(CLASSES)
