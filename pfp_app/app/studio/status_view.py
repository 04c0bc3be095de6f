"""The generation status line: progress bars for segments and steps, and one message rendered as HTML."""

from __future__ import annotations

import html
import re


def inline_markdown(text: str) -> str:
    """HTML of a status message: escaped, with the **bold** and `code` that messages use rendered, not shown raw."""
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def status_html(seg_done: int = 0, n_segments: int = 0, step: int | None = None, steps: int | None = None,
                message: str = "") -> str:
    bars = []
    if n_segments:
        bars.append(f'<div class="pfp-bar"><span>Segments {seg_done}/{n_segments}</span>'
                    f'<progress id="pfp-seg-progress" value="{seg_done}" max="{n_segments}"></progress></div>')
    if step is not None and steps:
        bars.append(f'<div class="pfp-bar"><span>Step {step}/{steps}</span>'
                    f'<progress id="pfp-step-progress" value="{step}" max="{steps}"></progress></div>')
    return f'<div class="pfp-status">{"".join(bars)}<p>{inline_markdown(message)}</p></div>'
