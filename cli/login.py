"""``hangar login`` and ``hangar logout``: a username and password (or token) for any OCI
registry, checked with the registry and stored where client.logins reads them."""

from __future__ import annotations

import argparse
import getpass
import sys

from client import errors
from client.config import load


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login = commands.add_parser(
        "login",
        help="store a username and password for a registry (Harbor, GHCR, GitLab, a Hangar robot …)",
        description=(
            "Check a username and password (or access token) with the registry, then store them in "
            "~/.hangar/auth.json (mode 0600; --docker-config: Docker's config.json or its credential "
            "helper). Pulls and pushes use them for that registry only (docs/client.md, 'Credentials')."
        ),
    )
    login.add_argument("registry", help="HOST[:PORT] or URL of the registry")
    login.add_argument("-u", "--username", help="the username (asked for when missing)")
    secret = login.add_mutually_exclusive_group()
    secret.add_argument("-p", "--password", help="the password (other users see it in ps: prefer --password-stdin)")
    secret.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _common(login)
    login.set_defaults(handler=_login)

    logout = commands.add_parser("logout", help="forget the stored username and password for a registry")
    logout.add_argument("registry", help="HOST[:PORT] or URL of the registry")
    _common(logout)
    logout.set_defaults(handler=_logout)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--docker-config",
        action="store_true",
        help="use Docker's config.json ($DOCKER_CONFIG or ~/.docker) and its credential helper, not Hangar's file",
    )
    parser.add_argument("--insecure", action="store_true", help="use plain http")


def _login(args: argparse.Namespace) -> int:
    import asyncio

    from client.account import registry_base
    from client.http import check_login
    from client.logins import host_key, save

    settings = load()
    username = args.username or input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    else:
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise ValueError("a username and a password are needed")
    base = registry_base(args.registry, settings, args.insecure)
    asyncio.run(check_login(settings, base, username, password))
    where = save(settings.home, base, username, password, docker=args.docker_config)
    print(f"Login Succeeded: {username} on {host_key(base)} (stored in {where})")
    return 0


def _logout(args: argparse.Namespace) -> int:
    from client.account import registry_base
    from client.logins import host_key, remove

    settings = load()
    host = host_key(registry_base(args.registry, settings, args.insecure))
    removed = remove(settings.home, host, docker=args.docker_config)
    if not removed:
        raise errors.HangarError(f"not logged in to {host}")
    print(f"Removed the login for {host} from {', '.join(removed)}")
    return 0
