"""kdtune: hyperparameter search for knowledge distillation on Ray Tune, Optuna and MLflow.

The Python API (``docs/api.md``): load a spec, train one configuration, run a sweep, read the
best trial, promote it::

    import kdtune
    spec = kdtune.load_spec("examples/quickstart.yaml")
    result = kdtune.sweep(spec)            # -> SweepResult
    best = kdtune.best(spec)               # -> BestTrials
    kdtune.promote(spec)                   # -> Promotion
    kdtune.train(kdtune.load_spec(result.best_yaml))   # -> TrainResult
"""

__version__ = "0.2.0"

_API = {"load_spec": "kdtune.checks", "Spec": "kdtune.spec", "SpecError": "kdtune.spec",
        "train": "kdtune.api", "sweep": "kdtune.api", "best": "kdtune.api", "promote": "kdtune.api",
        "TrainResult": "kdtune.api", "SweepResult": "kdtune.api", "BestTrials": "kdtune.api",
        "Promotion": "kdtune.api"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    # lazy: `import kdtune` (and `kdtune --help`) must not import torch, Ray or MLflow
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(name)
