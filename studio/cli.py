"""``tnstudio serve``: the studio's command, added to the engine's CLI through the ``tnstudio.commands`` entry point
(so the engine never imports the UI). Authentication options are Panel's and are passed on as they are."""
from __future__ import annotations

import argparse

AUTH_OPTIONS = ("basic_auth", "oauth_provider", "oauth_key", "oauth_secret", "oauth_redirect_uri", "cookie_secret",
                "oauth_encryption_key")


def cmd_serve(args: argparse.Namespace) -> int:
    from studio.app import serve

    auth = {k: getattr(args, k) for k in AUTH_OPTIONS if getattr(args, k)}
    serve(port=args.port, address=args.address, show=args.show, **auth)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="start the studio in the browser",
                       description="Start the studio. It listens on 127.0.0.1 unless --address says otherwise; on "
                                   "any other address, protect it with --basic-auth or OAuth (a warning says so).")
    s.add_argument("--port", type=int, default=5006)
    s.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                          "only)")
    s.add_argument("--show", action="store_true", help="open a browser window")
    a = s.add_argument_group("authentication (Panel's; see Panel's docs on authentication)")
    a.add_argument("--basic-auth", dest="basic_auth", metavar="PASSWORD_OR_FILE",
                   help="a password every user gives, or a JSON file of user: password")
    a.add_argument("--cookie-secret", dest="cookie_secret", metavar="SECRET",
                   help="secret that signs the login cookies (basic auth and OAuth)")
    a.add_argument("--oauth-provider", dest="oauth_provider", metavar="NAME",
                   help="an OAuth provider Panel knows (github, google, azure, okta, generic, ...)")
    a.add_argument("--oauth-key", dest="oauth_key", metavar="KEY", help="OAuth client id")
    a.add_argument("--oauth-secret", dest="oauth_secret", metavar="SECRET", help="OAuth client secret")
    a.add_argument("--oauth-redirect-uri", dest="oauth_redirect_uri", metavar="URI", help="OAuth redirect URI")
    a.add_argument("--oauth-encryption-key", dest="oauth_encryption_key", metavar="KEY",
                   help="key that encrypts the OAuth tokens kept in cookies")
    s.set_defaults(handler=cmd_serve)
