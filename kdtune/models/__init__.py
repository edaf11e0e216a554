"""kdtune's model zoo: every model is a ``TappedModel`` built by ``create_model(name, ...)``.

Importing this package registers the built-in models (the zoo modules below); plugins add
more through the ``kdtune.models`` entry point group.
"""

from kdtune.models._base import TAPS, ModelArgumentError, TappedModel, count_params, create_model
from kdtune.models import cnn, resnet, vgg  # noqa: F401  (importing registers the models)
from kdtune.models.widen import widen

__all__ = ["TAPS", "ModelArgumentError", "TappedModel", "count_params", "create_model", "widen"]
