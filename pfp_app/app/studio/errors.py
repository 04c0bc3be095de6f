"""How the studio's callbacks say what went wrong: the options layer's message as a `gr.Error`, and "nothing
changes" for a refused action."""

from __future__ import annotations

import gradio as gr

from ..options import OptionError, check_options


def checked(**values) -> dict:
    """The options layer (pfp_app.app.options), its message as a gr.Error."""
    try:
        return check_options("ui", **values)
    except OptionError as err:
        raise gr.Error(str(err)) from None


def no_change(n: int) -> tuple:
    return tuple(gr.update() for _ in range(n))
