"""Sources: turn user data (image folders, HF datasets, COCO captions, videos) into samples.

``base`` holds the Source interface and helpers, ``images`` the image sources, ``video`` clips.
"""

from .base import Skipped, Source, SourceError, Unreadable, sanitize_key
from .images import CocoSource, HFSource, ImageFolderSource
from .video import VideoSource

__all__ = ["Source", "Skipped", "SourceError", "Unreadable", "sanitize_key", "ImageFolderSource", "HFSource",
           "CocoSource", "VideoSource"]
