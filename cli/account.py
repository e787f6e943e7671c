"""``hangar signin``, ``signout``, ``whoami``, ``passwd``, ``keys``, ``robots``, ``visibility``,
``members``: the account commands, all signed requests to a Hangar registry's account API."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from client import errors
from client.config import load
from formats.units import parse_duration

if TYPE_CHECKING:
    from client.account import AccountClient

# client.keys and client.account (cryptography, httpx, aiohttp) are imported where they are
# used: every hangar command builds this parser, and most of them never sign anything.

APPROVAL_POLL = 2.0
APPROVAL_WAIT = 15 * 60.0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    signin = commands.add_parser(
        "signin",
        help="sign in to a registry with this machine's key (creating the key and the account if needed)",
        description=(
            "Bind this machine's ed25519 key (~/.hangar/id_ed25519, created if missing) to an account. "
            "A new user is signed up when the registry allows it (--invite for invite-only registries); "
            "a new key for an existing user waits until a signed-in device runs 'hangar keys approve CODE'."
        ),
    )
    _registry_arg(signin)
    signin.add_argument("--username", help="the account to sign in to, or to create")
    signin.add_argument("--invite", help="an invite code from the registry's administrator")
    signin.add_argument("--key-name", help="a name for this key (default: this machine's hostname)")
    signin.add_argument(
        "--web", action="store_true", help="print a one-time link that signs a browser in to your account"
    )
    signin.set_defaults(handler=_signin)

    passwd = commands.add_parser(
        "passwd",
        help="set the password you sign in to the registry's web site with",
        description="Set the web site's password of the account this machine's key belongs to (a signed request).",
    )
    _registry_arg(passwd)
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input, not the terminal"
    )
    passwd.set_defaults(handler=_passwd)

    signout = commands.add_parser("signout", help="remove this machine's key from its account")
    _registry_arg(signout)
    signout.set_defaults(handler=_signout)

    whoami = commands.add_parser("whoami", help="show the account this machine's key belongs to")
    _registry_arg(whoami)
    whoami.set_defaults(handler=_whoami)

    key_cmd = commands.add_parser("keys", help="list, remove and approve the keys of your account")
    sub = key_cmd.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    p = sub.add_parser("show", help="print this machine's public key (creating the key pair if missing)")
    p.add_argument("--key", help="the key file (default ~/.hangar/id_ed25519 or HANGAR_KEY)")
    p.set_defaults(handler=_keys_show)
    p = sub.add_parser("list", help="your keys, with fingerprint, name and last use")
    _registry_arg(p)
    p.set_defaults(handler=_keys_list)
    p = sub.add_parser("remove", help="remove a key by its SHA256: fingerprint")
    p.add_argument("fingerprint")
    _registry_arg(p)
    p.set_defaults(handler=_keys_remove)
    p = sub.add_parser("approve", help="approve a new device's key with the code its 'hangar signin' printed")
    p.add_argument("code")
    _registry_arg(p)
    p.set_defaults(handler=_keys_approve)

    robots = commands.add_parser("robots", help="scoped, expiring tokens for CI and OCI clients")
    sub = robots.add_subparsers(dest="robots_command", required=True, metavar="COMMAND")
    p = sub.add_parser("create", help="create (or replace) a robot; prints its token once")
    p.add_argument("robot", help="NAMESPACE/NAME, e.g. alice/ci")
    p.add_argument("--scope", choices=["pull", "push"], default="pull")
    p.add_argument("--expires", default="30d", help="lifetime, e.g. 12h, 30d (default 30d)")
    _registry_arg(p)
    p.set_defaults(handler=_robots_create)
    p = sub.add_parser("list", help="a namespace's robots")
    p.add_argument("namespace")
    _registry_arg(p)
    p.set_defaults(handler=_robots_list)
    p = sub.add_parser("delete", help="delete a robot (its token stops working)")
    p.add_argument("robot", help="NAMESPACE/NAME")
    _registry_arg(p)
    p.set_defaults(handler=_robots_delete)

    vis = commands.add_parser(
        "visibility", help="make a repository (NS/MODEL) or a namespace's default (NS) public or private"
    )
    vis.add_argument("target", help="NAMESPACE/MODEL, or NAMESPACE for the default of new repositories")
    vis.add_argument("visibility", choices=["public", "private"])
    _registry_arg(vis)
    vis.set_defaults(handler=_visibility)

    members = commands.add_parser("members", help="set or remove a member of an organisation you own")
    members.add_argument("org")
    members.add_argument("username")
    members.add_argument("role", choices=["owner", "writer", "reader", "remove"])
    _registry_arg(members)
    members.set_defaults(handler=_members)


def _registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("registry", nargs="?", help="HOST[:PORT] or URL of the registry (default: HANGAR_REGISTRY)")
    parser.add_argument("-r", "--registry", dest="registry_option", metavar="REGISTRY", help="the same, as an option")
    parser.add_argument("--insecure", action="store_true", help="use plain http")
    parser.add_argument("--key", help="the ed25519 key to use (default ~/.hangar/id_ed25519 or HANGAR_KEY)")


def _client(args: argparse.Namespace, *, create_key: bool = False) -> AccountClient:
    from client import keys
    from client.account import AccountClient, registry_base

    settings = load()
    path = Path(args.key).expanduser() if args.key else settings.key_path
    if create_key:
        identity, created = keys.load_or_create(path)
        if created:
            print(f"Generated a new key {path}\nYour public key is:\n\n{identity.public_line}\n")
    else:
        identity = keys.load(path)
    registry = args.registry_option or args.registry
    return AccountClient(registry_base(registry, settings, args.insecure), identity, settings)


def _signin(args: argparse.Namespace) -> int:
    if args.web:
        link = _client(args).signin_link()
        print(f"Open this link within {int(link['expires_in']) // 60} minutes to sign in to the web site:\n")
        print(f"    {link['url']}")
        return 0
    from client.account import connect_url

    client = _client(args, create_key=True)
    key_name = args.key_name or socket.gethostname()
    answer = client.signin(args.username, key_name)
    # A key bound to no account. The registry answers alike whether the name exists or not (202
    # with a code; older registries said 404 for a new name), so try to create the account when
    # sign-up may work; a name that is taken means a new device for an existing account.
    may_sign_up = answer.status == 404 or args.invite or answer.body.get("signup") == "open"
    if answer.status in (202, 404) and args.username and may_sign_up:
        try:
            user = client.signup(args.username, args.invite, key_name)
        except errors.RequestFailed as e:
            if e.status != 409 or answer.status != 202:
                raise
        else:
            _remember(client, user["username"])
            print(f"Created the account '{user['username']}' on {client.base}; you are signed in.")
            return 0
    if answer.status == 202:
        code = answer.body["code"]
        print(f"If '{args.username}' is your account, approve this key on a device signed in to it:\n")
        print(f"    hangar keys approve {code} {args.registry_option or args.registry or ''}".rstrip())
        print("\nor open this link in a browser signed in to the registry's web site:\n")
        print(f"    {connect_url(client.base, client.identity, socket.gethostname())}")
        mode = answer.body.get("signup")
        if mode == "invite" and not args.invite:
            print("\nNo account yet? This registry needs an invite: hangar signin --username NAME --invite CODE")
        elif mode == "closed":
            print("\nNo account yet? Sign-up is closed on this registry: ask an administrator to create it.")
        print("\nWaiting for approval (Ctrl-C to stop; the code expires in 15 minutes)…", flush=True)
        deadline = time.monotonic() + APPROVAL_WAIT
        while time.monotonic() < deadline:
            time.sleep(APPROVAL_POLL)
            answer = client.signin(args.username, key_name)
            if answer.status == 200:
                break
        else:
            raise errors.Unauthorized("the key was not approved in time; run 'hangar signin' again")
    body = client.expect(answer, 200)
    _remember(client, body["username"])
    print(f"Signed in to {client.base} as '{body['username']}' (key {client.identity.fingerprint}).")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("New web password: ")
        if getpass.getpass("Again: ") != password:
            raise ValueError("the two passwords differ")
    body = client.set_password(password)
    print(f"Password set for '{body['username']}': sign in at {client.base}/signin")
    return 0


def _remember(client: AccountClient, username: str) -> None:
    """From now on token requests to this registry are signed (client.credentials)."""
    from client.credentials import record_signin

    record_signin(client.settings.home, client.base, username, client.identity.fingerprint)


def _signout(args: argparse.Namespace) -> int:
    from client.credentials import forget_signin

    client = _client(args)
    client.signout()
    forget_signin(client.settings.home, client.base)
    print(f"Signed out of {client.base}: key {client.identity.fingerprint} removed from your account.")
    return 0


def _whoami(args: argparse.Namespace) -> int:
    client = _client(args)
    me = client.me()
    orgs = ", ".join(f"{org} ({role})" for org, role in me["organizations"].items()) or "none"
    print(f"{me['username']}{' (administrator)' if me['admin'] else ''} on {client.base}")
    print(f"organisations: {orgs}")
    print(f"key: {me['key']['fingerprint']} ({me['key']['name']})")
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from client import keys

    path = Path(args.key).expanduser() if args.key else load().key_path
    identity, created = keys.load_or_create(path)
    print(identity.public_line)
    print(f"# {identity.fingerprint}  {path}{' (new)' if created else ''}")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from client.progress import print_table

    client = _client(args)
    rows = [("FINGERPRINT", "NAME", "ADDED", "LAST USED")]
    for k in client.list_keys():
        mark = " *" if k["current"] else ""
        rows.append((k["fingerprint"] + mark, k["name"], k["created_at"][:19], (k["last_used_at"] or "never")[:19]))
    print_table(rows, gap="   ")
    return 0


def _keys_remove(args: argparse.Namespace) -> int:
    _client(args).remove_key(args.fingerprint)
    print(f"removed key {args.fingerprint}")
    return 0


def _keys_approve(args: argparse.Namespace) -> int:
    key = _client(args).approve(args.code)
    print(f"approved key {key['fingerprint']} ({key['name']})")
    return 0


def _split(robot: str) -> tuple[str, str]:
    namespace, sep, name = robot.partition("/")
    if not sep or not namespace or not name:
        raise ValueError(f"expected NAMESPACE/NAME, got {robot!r}")
    return namespace, name


def _robots_create(args: argparse.Namespace) -> int:
    namespace, name = _split(args.robot)
    robot = _client(args).create_robot(namespace, name, args.scope, parse_duration(args.expires))
    print(f"username: {robot['username']}\ntoken:    {robot['token']}\nscope:    {robot['scope']}")
    print(f"expires:  {robot['expires_at']}\n\nThe token is shown only now. Use it as a password, e.g.")
    print(f"    skopeo copy --src-creds '{robot['username']}:TOKEN' docker://REGISTRY/{namespace}/MODEL:TAG …")
    return 0


def _robots_list(args: argparse.Namespace) -> int:
    for robot in _client(args).robots(args.namespace):
        print(f"{robot['username']}\t{robot['scope']}\texpires {robot['expires_at'][:19]}")
    return 0


def _robots_delete(args: argparse.Namespace) -> int:
    namespace, name = _split(args.robot)
    _client(args).delete_robot(namespace, name)
    print(f"deleted robot {namespace}+{name}")
    return 0


def _visibility(args: argparse.Namespace) -> int:
    client = _client(args)
    if "/" in args.target:
        client.set_visibility(args.target, args.visibility)
        print(f"{args.target} is now {args.visibility}")
    else:
        client.set_default_visibility(args.target, args.visibility)
        print(f"new repositories in {args.target} will be {args.visibility}")
    return 0


def _members(args: argparse.Namespace) -> int:
    role = None if args.role == "remove" else args.role
    _client(args).set_member(args.org, args.username, role)
    print(
        f"removed {args.username} from {args.org}" if role is None else f"{args.username} is now {role} of {args.org}"
    )
    return 0
