"""Model zoo: CNNs for 32x32 CIFAR images rebuilt from the seed notebooks, by registry name.

    from harness.models import create_model, list_models
    model = create_model("resnet18", num_classes=100)

`python -m harness.models [pattern]` prints every model with its parameters, forward GFLOPs and seed.
`create_model` also builds models from outside the zoo: `my_pkg.my_module:build` (any importable callable
taking num_classes) and `timm/<name>` (with the timm extra); see `registry.py`.
"""

# Importing the family modules registers their factories.
from . import airnet, compact, convnext, densenet, efficientnet, inception, lenet, mobilenet, resnet, vgg  # noqa: F401
from .registry import (
    UnknownModelError,
    count_params,
    create_model,
    drop_path_models,
    forward_flops,
    list_models,
    model_facts,
    model_source,
    register_model,
)
from .weights import load_run, load_weights, save_weights

__all__ = [
    "UnknownModelError",
    "count_params",
    "create_model",
    "drop_path_models",
    "forward_flops",
    "list_models",
    "load_run",
    "load_weights",
    "model_facts",
    "model_source",
    "register_model",
    "save_weights",
]
