"""Hyperparameters: search-space files (``space``) and the one walk over them (``walk``)."""
