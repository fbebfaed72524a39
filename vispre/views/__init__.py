"""The augmentation MDP's views: crop boxes and the relative actions between them (``boxes``), and the
batched photometric augmentation that runs on the training device (``photometric``)."""

from .boxes import (
                    apply_action,
                    box_iou,
                    candidate_actions,
                    candidate_boxes,
                    compose_actions,
                    inverse_action,
                    relative_action,
                    sample_boxes,
)
from .photometric import IMAGENET_MEAN, IMAGENET_STD, Photometric

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Photometric", "apply_action", "box_iou", "candidate_actions",
           "candidate_boxes", "compose_actions", "inverse_action", "relative_action", "sample_boxes"]
