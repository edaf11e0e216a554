"""kdtune: hyperparameter search for knowledge distillation on Ray Tune, Optuna and MLflow.

The public API: load a spec, train one configuration, or run a sweep.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_spec", "Spec", "SpecError"]


def __getattr__(name: str):  # keep `import kdtune` light (no torch) for the CLI's --help
    if name in ("load_spec", "Spec", "SpecError"):
        from kdtune import config

        return getattr(config, name)
    raise AttributeError(name)
