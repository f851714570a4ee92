"""Data, training and evaluation: what turns a model config into a candidate and its verdict."""
