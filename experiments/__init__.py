"""Experiments: thin configurations run by make targets (python -m experiments.<name>)."""
