"""The studio UI: a Gradio Blocks layout (`layout.build_demo`) over plain callbacks (`studio.Studio`).

The callbacks only call the core (storyboard, pipeline, project, video_io, metrics) and can be tested
without a browser; the core never imports this package.
"""

from .callbacks import Studio

__all__ = ["Studio", "build_demo"]


def build_demo(studio: Studio):
    """The gr.Blocks of the studio (imported lazily: gradio is only needed when the app runs)."""
    from .layout import build_demo as _build

    return _build(studio)
