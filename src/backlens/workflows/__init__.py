"""Workflows: datasets, model builders, training, the demo and abstract runs, reports and plots."""
