"""vispre: visual pretraining with RL value objectives.

The Python API is vispre.api (``from vispre.api import load_recipe, create_method, pretrain, export,
load_encoder, run_eval``); the names that do not collide with a sub-package are also here, imported on
first use so that ``import vispre`` and the CLI's start stay light.
"""

__version__ = "0.1.0"

# vispre.pretrain and vispre.export are sub-packages: their functions are vispre.api.pretrain / .export
API = ("load_recipe", "create_method", "load_encoder", "run_eval")


def __getattr__(name: str):
    if name in API:
        import importlib  # not "from . import api": vispre.api imports modules that read vispre.__version__

        return getattr(importlib.import_module("vispre.api"), name)
    raise AttributeError(f"module 'vispre' has no attribute {name!r}")
