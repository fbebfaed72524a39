"""Export folders: ``write`` turns a checkpoint into a folder timm loads; ``read`` loads one back.

Only the reading side is imported here, so that evaluation and RL code can read exports without
importing the training side (``vispre.export.write`` imports the methods and the recipe).
"""

from .read import load_encoder, load_exported_module, load_module

__all__ = ["load_encoder", "load_exported_module", "load_module"]
