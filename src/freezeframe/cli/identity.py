"""``freezeframe identity``: what an operator needs to edit the identity file by hand.

- ``hash``: a password's hash for a user's ``password_hash`` (the password is read from the
  terminal, or from standard input when it is not one);
- ``app-credential``: a new application credential — the entry to add under
  ``application_credentials`` (with the secret's hash) and, once, the secret itself.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
import uuid
from typing import Any

import yaml

from freezeframe.cli.exitcodes import EXIT_OK, EXIT_USAGE


def _hash(_args: argparse.Namespace) -> int:
    from freezeframe.identity.passwords import hash_secret

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("freezeframe: the passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("freezeframe: an empty password is not accepted", file=sys.stderr)
        return EXIT_USAGE
    print(hash_secret(password))
    return EXIT_OK


def _app_credential(args: argparse.Namespace) -> int:
    from freezeframe.identity.passwords import hash_secret

    secret = secrets.token_urlsafe(48)
    entry: dict[str, Any] = {"id": uuid.uuid4().hex, "name": args.name, "user": args.user, "project": args.project,
                             "secret_hash": hash_secret(secret)}
    if args.role:
        entry["roles"] = args.role
    if args.expires:
        entry["expires_at"] = args.expires
    print("# Add under application_credentials: in the identity file (read again when it changes):")
    print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    print("# The secret, shown only now; a clouds.yaml entry that uses it:")
    print(yaml.safe_dump({"auth_type": "v3applicationcredential",
                          "auth": {"auth_url": args.auth_url, "application_credential_id": entry["id"],
                                   "application_credential_secret": secret},
                          "region_name": "RegionOne"}, sort_keys=False).rstrip())
    return EXIT_OK


def register(subparsers: Any) -> None:
    identity = subparsers.add_parser("identity", help="make password hashes and application credentials for the "
                                                      "identity file")
    actions = identity.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    p = actions.add_parser("hash", help="hash a password (read from the terminal or standard input)")
    p.set_defaults(func=_hash)
    p = actions.add_parser("app-credential", help="a new application credential: its entry and its secret")
    p.add_argument("--user", required=True, help="the user it acts as (id or name)")
    p.add_argument("--project", required=True, help="the project it is scoped to (id or name)")
    p.add_argument("--name", default="app-credential", help="its name (default app-credential)")
    p.add_argument("--role", action="append", help="a role it carries (repeat; default: all of the user's "
                                                  "roles in the project)")
    p.add_argument("--expires", metavar="ISO8601", help="when it stops working, e.g. 2027-01-01T00:00:00Z")
    p.add_argument("--auth-url", default="http://127.0.0.1:9292/identity", help="for the clouds.yaml entry")
    p.set_defaults(func=_app_credential)
