"""Training data: the procedural storyboard world and folders of real videos."""

from pfp_app.data.world import (
    WorldClip,
    WorldClipDataset,
    all_captions,
    caption_for,
    collate_clips,
    frames_for_seconds,
    parse_caption,
    render_storyboard,
    sample_clip,
    sample_storyboard,
)
from pfp_app.data.video_folder import VideoFolderDataset

__all__ = [
    "VideoFolderDataset",
    "WorldClip",
    "WorldClipDataset",
    "all_captions",
    "caption_for",
    "collate_clips",
    "frames_for_seconds",
    "parse_caption",
    "render_storyboard",
    "sample_clip",
    "sample_storyboard",
]
