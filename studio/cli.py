"""``tnstudio serve``: the studio's command, added to the engine's CLI through the ``tnstudio.commands`` entry point
(so the engine never imports the UI)."""
from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    from studio.app import serve

    serve(port=args.port, address=args.address, show=args.show)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="start the studio in the browser")
    s.add_argument("--port", type=int, default=5006)
    s.add_argument("--address", default="127.0.0.1")
    s.add_argument("--show", action="store_true", help="open a browser window")
    s.set_defaults(handler=cmd_serve)
