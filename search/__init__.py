"""Experiment drivers: one command per experiment kind (python -m search.<kind>)."""
