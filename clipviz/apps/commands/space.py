"""``clipviz space [SITE]``: the Space's Gradio app, run locally from the installed package."""

from __future__ import annotations

import argparse

from clipviz.apps.validate import int_type


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "space",
        help="run the Space's Gradio app locally (with an atlas tab when SITE is given)",
        description="Run clipviz's Gradio app (the one `clipviz publish --space` uploads) on this machine, from "
        "the installed package. Needs gradio (pip install gradio).",
    )
    sp.add_argument("site", nargs="?", metavar="SITE", help="an atlas (clipviz atlas) to browse in the Atlas tab")
    sp.add_argument("--models", default="world-clip", help="comma-separated model specs offered (default: world-clip)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    sp.add_argument("--port", type=int_type("--port", 1, 65535), default=7860)
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ipaddress
    import re
    import time
    from importlib.util import find_spec
    from pathlib import Path

    from clipviz.errors import ClipvizError
    from clipviz.results import is_atlas

    if find_spec("gradio") is None:
        raise ClipvizError("the app needs gradio, which is not installed: pip install gradio")
    if args.site is not None and not is_atlas(Path(args.site)):
        raise ClipvizError(
            f"'{args.site}' is not an atlas (no atlas.json): build one with clipviz atlas RESULTS --out SITE"
        )
    if re.fullmatch(r"[\d.]+", args.host):  # dotted numbers must be an IPv4 address (a name is looked up by Gradio)
        try:
            ipaddress.ip_address(args.host)
        except ValueError:
            raise ClipvizError(f"--host {args.host} is not an IP address: e.g. 127.0.0.1, or 0.0.0.0 (all)") from None
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    from clipviz.apps.space import build_app

    app = build_app(models=models, atlas=args.site)
    print(f"serving on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True)
    try:  # Gradio's own wait swallows Ctrl-C and returns; here it ends as every command's does (one line, 130)
        while getattr(app, "is_running", False):
            time.sleep(0.5)
    finally:
        app.close()
    return 0
