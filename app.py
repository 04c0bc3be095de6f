"""PFP Studio: `python app.py` opens the studio on http://127.0.0.1:7860 (entry point only; the studio is pfp_app/app/studio).

Safe by default: binds 127.0.0.1 unless --listen, no public share link unless --share, nothing downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="PFP Studio: storyboard -> one long, consistent video, with a memory "
                                            "you can inspect.")
    p.add_argument("--model", default="default",
                   help="'default' (the embedded model in assets/; falls back to the untrained 'tiny-random' when "
                        "missing), 'tiny-random', a PFP model folder or a Wan 2.1 diffusers folder")
    p.add_argument("--profile", default="auto", help="runtime profile: auto, resident, lowvram, fp8, offload, offload+fp8, cpu (presets/profiles/)")
    p.add_argument("--projects", default="projects", help="folder holding the projects (default ./projects)")
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default=False, metavar="HOST",
                   help="serve on HOST, or on all interfaces (0.0.0.0) when no HOST is given, instead of 127.0.0.1; "
                        "requests must name this machine (Host header check)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # before gradio is imported: no analytics, no hub access
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from pfp_app.model.bundle import ModelLoadError
    from pfp_app.app.studio import Studio, build_demo
    from starlette.middleware import Middleware

    from pfp_app.app.studio.host_guard import HostGuard, allowed_hosts
    from pfp_app.app.studio.layout import launch_kwargs

    projects = Path(args.projects).resolve()
    projects.mkdir(parents=True, exist_ok=True)
    studio = Studio(projects, model_spec=args.model, profile=args.profile)
    try:
        studio.load()
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"PFP Studio: model {studio.model.label}; projects in {projects}", file=sys.stderr)
    demo = build_demo(studio)
    demo.queue(default_concurrency_limit=1)
    # Host and Origin checks (DNS rebinding, other local origins); a --share tunnel arrives under gradio.live's
    # name, so the check is off there (--share is public by choice)
    guard = [] if args.share else [Middleware(HostGuard, hosts=allowed_hosts(args.listen or None), port=args.port)]
    demo.launch(server_name=args.listen or "127.0.0.1", server_port=args.port, share=args.share,
                allowed_paths=[str(projects)], max_file_size="2gb", inbrowser=False, footer_links=[],
                app_kwargs={"middleware": guard}, **launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
