"""``tnstudio serve``: the studio's command, added to the engine's CLI through the ``tnstudio.commands`` entry point
(so the engine never imports the UI). Authentication options are Panel's and are passed on as they are."""
from __future__ import annotations

import argparse
import errno
import json
import os
import socket
from pathlib import Path

from engine.cli.common import UserError
from engine.format import first_line

AUTH_OPTIONS = ("basic_auth", "oauth_provider", "oauth_key", "oauth_secret", "oauth_redirect_uri", "cookie_secret",
                "oauth_encryption_key")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_address(address: str, port: int) -> list[tuple]:
    """``--address`` as the server will bind it (getaddrinfo, passive, as tornado does), returned for
    :func:`_check_free`: a name that resolves to nothing, or no address at all, is refused; no socket is opened."""
    if not address.strip():
        raise UserError("--address is empty: give an address to listen on, e.g. 127.0.0.1")
    try:
        return socket.getaddrinfo(address, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise UserError(f"--address {address!r}: not an address this machine can listen on ({reason})") from None


def _check_basic_auth(value: str) -> None:
    """Panel reads ``--basic-auth`` as a JSON file of ``{user: password}`` when it names a file, else as the one
    password (see panel.auth.BasicAuthProvider): an empty one would serve without authentication, and a file it
    cannot read fails only at each login; both are refused here, as is a missing ``.json`` file or a folder (which
    would silently become the password)."""
    if not value.strip():
        raise UserError("--basic-auth is empty: give a password or a JSON file of user: password (an empty one "
                        "would serve without authentication)")
    path = Path(value)
    if path.is_dir():
        raise UserError(f"--basic-auth {value}: is a folder; give a password or a JSON file of user: password")
    if not path.is_file():
        if value.lower().endswith(".json"):
            raise UserError(f"--basic-auth {value}: no such file (a JSON file of user: password)")
        return
    try:
        users = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"--basic-auth {value}: cannot read it ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"--basic-auth {value}: not a JSON file of user: password ({first_line(e)})") from None
    if not isinstance(users, dict) or not users or not all(
            isinstance(u, str) and u and isinstance(pw, str) and pw for u, pw in users.items()):
        raise UserError(f"--basic-auth {value}: expected a JSON object of user: password (non-empty strings, at "
                        f"least one user)")


def _check(args: argparse.Namespace) -> list[tuple]:
    """Every argument, before anything starts: one line (exit status 2) for the first problem. Returns the
    addresses ``--address`` resolves to."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535 (0: any free port), got {args.port}")
    where = _check_address(args.address, args.port)
    for key in AUTH_OPTIONS:
        value = getattr(args, key)
        if value is not None and key != "basic_auth" and not value.strip():
            raise UserError(f"{_flag(key)} is empty")
    if args.basic_auth is not None:
        _check_basic_auth(args.basic_auth)
    if args.basic_auth is not None and args.oauth_provider is not None:
        raise UserError("give --basic-auth or --oauth-provider, not both (Panel would use basic auth only)")
    if (args.basic_auth is not None or args.oauth_provider is not None) and not args.cookie_secret and not (
            os.environ.get("PANEL_COOKIE_SECRET") or os.environ.get("BOKEH_COOKIE_SECRET")):
        which = "--basic-auth" if args.basic_auth is not None else "--oauth-provider"
        raise UserError(f"{which} needs --cookie-secret SECRET (or $PANEL_COOKIE_SECRET): Panel signs the login "
                        f"cookies with it, and without it every page fails")
    if args.oauth_provider is not None:
        from panel.auth import AUTH_PROVIDERS

        if args.oauth_provider not in AUTH_PROVIDERS:
            raise UserError(f"--oauth-provider {args.oauth_provider!r}: not a provider Panel knows; choose from "
                            f"{', '.join(sorted(AUTH_PROVIDERS))}")
    return where


def _check_home() -> None:
    """The home folder the studio keeps drafts, designs, runs and searches in, and the folders it reads at once
    (runs, searches, drafts): folders it can write (created when missing), else one line instead of a studio whose
    tabs fail."""
    from engine.home import tnstudio_home

    home = tnstudio_home()
    named = " (TNSTUDIO_HOME)" if os.environ.get("TNSTUDIO_HOME") else ""
    for path in (home, home / "runs", home / "search", home / "drafts"):
        what = f"home folder {home}{named}" if path == home else f"folder {path}"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"{what}: a file is in the way of the folder") from None
        except OSError as e:
            raise UserError(f"cannot use the {what}: {e.strerror or e}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"cannot use the {what}: not writable")


def _check_free(address: str, port: int, resolved: list[tuple]) -> None:
    """Whether the server could listen on ``address:port`` (a port in use, an address this machine lacks): on each
    of the addresses ``address`` resolved to (:func:`_check_address`), a socket is bound as tornado binds it and
    closed at once, before the server starts."""
    if port == 0:
        return
    for family, kind, proto, _, where in resolved:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(where)
        except OSError as e:
            if family == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:
                continue  # tornado skips an IPv6 address the machine lacks, too
            raise UserError(f"cannot listen on {address} port {port}: {e.strerror or e}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    _check_free(args.address, args.port, _check(args))
    _check_home()
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
