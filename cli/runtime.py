"""``hangar serve``, ``run``, ``ps`` and ``stop``: the local runtime and the commands that talk to
it over its Ollama API (``HANGAR_HOST``, default 127.0.0.1:11434).

httpx is imported inside the commands that use it: every hangar command builds this module's
parser, and ``hangar list`` should not pay for an HTTP client it does not use."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from client import errors
from client.config import load
from client.progress import human_size, print_table

REPL_HELP = """Available commands:
  /set parameter NAME VALUE   set a parameter (temperature, num_ctx, top_k, …)
  /set system TEXT            set the system message
  /set think [LEVEL]          think before answering (a thinking model; LEVEL: low, medium, high, max)
  /set nothink                answer without thinking
  /show info|parameters|system|template|modelfile|license
  /clear                      clear the conversation
  /bye                        exit
  /?, /help                   this help

Use \"\"\" to begin and end a multi-line message.
With a vision model, name image files in a message (/path/to/picture.png) to attach them."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="start the local runtime (Ollama and OpenAI compatible API)",
        description="Serve the models in the local store on the Ollama API (/api/*) and the OpenAI-compatible "
        "API (/v1/*). Environment: HANGAR_HOST (default 127.0.0.1:11434), HANGAR_MODELS, HANGAR_KEEP_ALIVE (5m), "
        "HANGAR_CONTEXT_LENGTH (4096), HANGAR_MAX_LOADED_MODELS (3), HANGAR_MAX_MEMORY, HANGAR_MAX_QUEUE (512), "
        "HANGAR_NUM_PARALLEL (1), HANGAR_ORIGINS, HANGAR_API_KEY.",
    )
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info")
    serve.set_defaults(handler=_serve)

    run = commands.add_parser(
        "run",
        help="chat with a model (pulled and served as needed)",
        description="Answer PROMPT once, or chat interactively. Pulls the model if it is missing and starts "
        "'hangar serve' in the background if no runtime answers at HANGAR_HOST. Piped input is prepended to "
        "the prompt. An embedding model prints the prompt's vector as a JSON array. A runtime started this way "
        "logs to $HANGAR_HOME/logs/serve.log and writes its pid to serve.pid beside it. With a vision model, "
        "image files named in the prompt (.png, .jpg, .jpeg, .webp, .gif, .bmp) are attached.",
    )
    run.add_argument("model")
    run.add_argument("prompt", nargs="*", help="answer this and exit")
    run.add_argument("--format", choices=["json"], help="answer in JSON")
    run.add_argument("--verbose", action="store_true", help="print timings after each answer")
    run.add_argument("--keepalive", help="how long the model stays loaded after this, e.g. 10m, 0, -1")
    run.add_argument("--insecure", action="store_true", help="plain http if the model must be pulled")
    run.add_argument("--nowordwrap", action="store_true", help="accepted for compatibility; output is not wrapped")
    run.add_argument(
        "--think",
        nargs="?",
        const="true",
        action=_ThinkFlag,
        metavar="true|false|low|medium|high|max",
        help="think before answering (thinking models think unless --think=false); the thinking goes to stderr",
    )
    run.add_argument("--hidethinking", action="store_true", help="do not show a thinking model's thinking")
    run.set_defaults(handler=_run, trailing_words="prompt")

    ps = commands.add_parser("ps", help="list the models the runtime has loaded")
    ps.set_defaults(handler=_ps)

    stop = commands.add_parser("stop", help="unload a model from the runtime")
    stop.add_argument("model")
    stop.set_defaults(handler=_stop)


THINK_VALUES: dict[str, Any] = {"true": True, "false": False, "low": "low", "medium": "medium", "high": "high"}
THINK_VALUES["max"] = "max"  # Ollama 0.33's fourth level


class _ThinkFlag(argparse.Action):
    """``--think``, ``--think=VALUE``: as in Ollama, a bare ``--think`` followed by the prompt
    does not take the prompt's first word as its value."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option: Any = None
    ) -> None:
        if value in THINK_VALUES:
            setattr(namespace, self.dest, THINK_VALUES[value])
            return
        setattr(namespace, self.dest, True)
        namespace.think_spill = [*getattr(namespace, "think_spill", []), value]  # a word of the prompt


def daemon_url() -> str:
    from runtime.config import local_url, parse_host

    return local_url(*parse_host(os.environ.get("HANGAR_HOST") or "127.0.0.1:11434"))


def _headers() -> dict[str, str]:
    key = os.environ.get("HANGAR_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from runtime.config import load as load_runtime

    settings = load_runtime()
    print(f"Hangar runtime listening on {settings.base_url} (models: {load().models})", file=sys.stderr, flush=True)
    uvicorn.run(
        "runtime.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        http="httptools",
        loop="uvloop",
        timeout_keep_alive=30,
        server_header=False,
    )
    return 0


def ensure_daemon(base: str, timeout: float = 60.0) -> None:
    """Start ``hangar serve`` in the background unless a runtime already answers."""
    if _alive(base):
        return
    home = load().home
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "serve.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (logs / "serve.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _alive(base):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise errors.RequestFailed(f"the runtime did not start; see {logs / 'serve.log'}", 503)


def _alive(base: str) -> bool:
    import httpx

    try:
        return httpx.head(base + "/", timeout=2, headers=_headers()).status_code == 200
    except httpx.TransportError:
        return False


def _post_stream(base: str, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import httpx

    with httpx.stream("POST", base + path, json=body, timeout=None, headers=_headers()) as r:
        if r.status_code >= 400:
            r.read()
            raise errors.RequestFailed(errors.response_text(r), r.status_code)
        for line in r.iter_lines():
            if line.strip():
                item = json.loads(line)
                if "error" in item:
                    raise errors.RequestFailed(str(item["error"]), 500)
                yield item


def _show(base: str, model: str) -> dict[str, Any] | None:
    import httpx

    r = httpx.post(base + "/api/show", json={"model": model}, timeout=60, headers=_headers())
    if r.status_code == 404:
        return None
    if r.status_code >= 400:
        raise errors.RequestFailed(errors.response_text(r), r.status_code)
    return dict(r.json())


def _pull_through(base: str, model: str, insecure: bool) -> None:
    from client.progress import Progress, ProgressView

    # On stderr: stdout carries only the answer, so `hangar run m "…" > answer.txt` holds just that.
    with ProgressView(sys.stderr) as view:
        for item in _post_stream(base, "/api/pull", {"model": model, "insecure": insecure}):
            view(Progress(item.get("status", ""), item.get("digest"), item.get("total"), item.get("completed")))


IMAGE_PATH = re.compile(r"""(?:^|\s)((?:~|\.{1,2}|/)?(?:[^\s'"]|\\ )+\.(?:png|jpe?g|webp|gif|bmp))(?=\s|$)""", re.I)


def attach_images(text: str) -> tuple[str, list[str]]:
    """Image files named in a prompt (as Ollama's CLI finds them): the prompt without them, and
    their contents, base64-encoded. Names of missing files stay in the text."""
    images: list[str] = []
    kept = text
    for match in IMAGE_PATH.finditer(text):
        name = match.group(1)
        path = Path(os.path.expanduser(name.replace("\\ ", " ")))
        if path.is_file():
            images.append(base64.b64encode(path.read_bytes()).decode())
            kept = kept.replace(name, "", 1)
            print(f"Added image '{path}'", file=sys.stderr)
    return " ".join(kept.split()) if images else text, images


def _run(args: argparse.Namespace) -> int:
    import httpx

    base = daemon_url()
    ensure_daemon(base)
    info = _show(base, args.model)
    if info is None:
        _pull_through(base, args.model, args.insecure)
        info = _show(base, args.model)
        if info is None:
            raise errors.ModelNotFound(args.model)
    keep_alive: Any = args.keepalive
    if keep_alive is not None and keep_alive.lstrip("-").replace(".", "", 1).isdigit():
        keep_alive = float(keep_alive)
    prompt = " ".join([*getattr(args, "think_spill", []), *args.prompt])
    if not sys.stdin.isatty():
        # As Ollama: piped input first, then the arguments, joined by a space.
        prompt = " ".join(part for part in (sys.stdin.read(), prompt) if part)
    capabilities = info.get("capabilities", [])
    if "embedding" in capabilities and "completion" not in capabilities:
        if not prompt:
            raise ValueError("an embedding model needs a prompt to embed")
        r = httpx.post(
            base + "/api/embed",
            json={"model": args.model, "input": prompt, "keep_alive": keep_alive},
            timeout=None,
            headers=_headers(),
        )
        if r.status_code >= 400:
            raise errors.RequestFailed(errors.response_text(r), r.status_code)
        print(json.dumps(r.json()["embeddings"][0]))
        return 0
    vision = "vision" in capabilities
    if prompt:
        body: dict[str, Any] = {"model": args.model, "prompt": prompt}
        if vision:
            body["prompt"], body["images"] = attach_images(prompt)
        if args.format:
            body["format"] = args.format
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        if args.think is not None:
            body["think"] = args.think
        final = _stream_answer(
            base,
            "/api/generate",
            body,
            lambda item: item.get("response", ""),
            lambda item: item.get("thinking", ""),
            show_thinking=not args.hidethinking,
        )
        if args.verbose:
            _timings(final)
        return 0
    return _repl(base, args, info, keep_alive)


def _stream_answer(
    base: str, path: str, body: dict[str, Any], text: Any, thinking: Any = None, show_thinking: bool = True
) -> dict[str, Any]:
    """Print the answer as it streams; a thinking model's thinking goes to stderr (framed as
    Ollama frames it), so stdout holds just the answer."""
    final: dict[str, Any] = {}
    thinking_shown = False
    for item in _post_stream(base, path, body):
        thought = thinking(item) if thinking is not None else ""
        if thought and show_thinking:
            if not thinking_shown:
                sys.stderr.write("Thinking...\n")
                thinking_shown = True
            sys.stderr.write(thought)
            sys.stderr.flush()
        piece = text(item)
        if thinking_shown and (piece or item.get("done")):
            sys.stderr.write("\n...done thinking.\n\n")
            sys.stderr.flush()
            thinking_shown, show_thinking = False, False  # thinking comes first: once it is over, it is over
        sys.stdout.write(piece)
        sys.stdout.flush()
        if item.get("done"):
            final = item
    sys.stdout.write("\n")
    sys.stdout.flush()
    return final


def _timings(final: dict[str, Any]) -> None:
    def seconds(ns: int) -> str:
        return f"{ns / 1e9:.6f}s" if ns < 60e9 else f"{ns / 60e9:.1f}m"

    def rate(count: int, ns: int) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "n/a"

    rows = [
        ("total duration", seconds(final.get("total_duration", 0))),
        ("load duration", seconds(final.get("load_duration", 0))),
        ("prompt eval count", f"{final.get('prompt_eval_count', 0)} token(s)"),
        ("prompt eval duration", seconds(final.get("prompt_eval_duration", 0))),
        ("prompt eval rate", rate(final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0))),
        ("eval count", f"{final.get('eval_count', 0)} token(s)"),
        ("eval duration", seconds(final.get("eval_duration", 0))),
        ("eval rate", rate(final.get("eval_count", 0), final.get("eval_duration", 0))),
    ]
    for label, value in rows:
        print(f"{label + ':':<21} {value}", file=sys.stderr)


def _read_message() -> str | None:
    """One message from the terminal; ``\"\"\"`` opens and closes a multi-line one. None at EOF."""
    try:
        line = input(">>> ")
    except EOFError:
        return None
    if not line.lstrip().startswith('"""'):
        return line
    text = line.lstrip()[3:]
    if text.rstrip().endswith('"""') and text.strip() != "":
        return text.rstrip()[:-3]
    lines = [text] if text else []
    while True:
        try:
            more = input("... ")
        except EOFError:
            break
        if more.rstrip().endswith('"""'):
            lines.append(more.rstrip()[:-3])
            break
        lines.append(more)
    return "\n".join(lines)


def _repl(base: str, args: argparse.Namespace, info: dict[str, Any], keep_alive: Any) -> int:
    from formats.options import OPTION_TYPES, OptionError, parse_parameter

    messages: list[dict[str, Any]] = []
    options: dict[str, Any] = {}
    system: str | None = None
    print(">>> Send a message (/? for help)", file=sys.stderr)
    while True:
        text = _read_message()
        if text is None or text.strip() in ("/bye", "/exit"):
            return 0
        if not text.strip():
            continue
        command = text.strip()
        if command in ("/?", "/help"):
            print(REPL_HELP)
            continue
        if command == "/clear":
            messages.clear()
            print("Cleared session context")
            continue
        if command.startswith("/set "):
            parts = shlex.split(command[5:])
            if len(parts) >= 3 and parts[0] == "parameter":
                name = parts[1]
                if name not in OPTION_TYPES:
                    print(f"Unknown parameter '{name}'")
                    continue
                try:
                    value = parse_parameter(name, " ".join(parts[2:]))
                except OptionError as e:
                    print(f"Couldn't set parameter: {e}")
                    continue
                options[name] = [*options.get(name, []), value] if name == "stop" else value
                print(f"Set parameter '{name}' to '{' '.join(parts[2:])}'")
            elif parts and parts[0] == "think" and (len(parts) == 1 or parts[1] in THINK_VALUES):
                args.think = THINK_VALUES[parts[1]] if len(parts) > 1 else True
                print("Set 'think' mode." if args.think is not False else "Set 'nothink' mode.")
            elif parts == ["nothink"]:
                args.think = False
                print("Set 'nothink' mode.")
            elif len(parts) >= 2 and parts[0] == "system":
                system = command[5:].strip()[len("system") :].strip().strip('"')
                print("Set system message.")
            else:
                print("Usage: /set parameter NAME VALUE | /set system TEXT | /set think [LEVEL] | /set nothink")
            continue
        if command.startswith("/show"):
            what = command[5:].strip() or "info"
            field = {
                "parameters": "parameters",
                "system": "system",
                "template": "template",
                "modelfile": "modelfile",
                "license": "license",
            }.get(what)
            if field:
                print(info.get(field) or f"No {what} was specified for this model.")
            else:
                details = info.get("details", {})
                for key in ("family", "parameter_size", "quantization_level"):
                    print(f"  {key:<20}{details.get(key, '')}")
                print(f"  {'capabilities':<20}{', '.join(info.get('capabilities', []))}")
            continue
        if command.startswith("/"):
            print(f"Unknown command '{command.split()[0]}'. Type /? for help")
            continue
        message: dict[str, Any] = {"role": "user", "content": text}
        if "vision" in info.get("capabilities", []):
            message["content"], message["images"] = attach_images(text)
        messages.append(message)
        convo = ([{"role": "system", "content": system}] if system else []) + messages
        body: dict[str, Any] = {"model": args.model, "messages": convo, "options": options}
        if args.format:
            body["format"] = args.format
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        if args.think is not None:
            body["think"] = args.think
        answer: list[str] = []
        thought: list[str] = []
        final = _stream_answer(
            base,
            "/api/chat",
            body,
            lambda item, out=answer: _collect_piece(item, out),
            lambda item, out=thought: _collect_piece(item, out, "thinking"),
            show_thinking=not args.hidethinking,
        )
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(answer)}
        if thought:  # the template may write earlier thinking back (.Thinking)
            reply["thinking"] = "".join(thought)
        messages.append(reply)
        if args.verbose:
            _timings(final)
        print()


def _collect_piece(item: dict[str, Any], out: list[str], key: str = "content") -> str:
    piece = str(item.get("message", {}).get(key) or "")
    if piece:
        out.append(piece)
    return piece


def _ps(args: argparse.Namespace) -> int:
    import httpx

    base = daemon_url()
    try:
        r = httpx.get(base + "/api/ps", timeout=10, headers=_headers())
    except httpx.TransportError:
        raise errors.RegistryUnreachable(f"no runtime answers at {base}: start it with 'hangar serve'") from None
    rows = [("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    for m in r.json().get("models", []):
        size, vram = m.get("size", 0), m.get("size_vram", 0)
        rows.append(
            (
                m["name"],
                m["digest"][:12],
                human_size(size),
                processor(vram / size if size else 0),
                str(m.get("context_length", "")),
                _until(m.get("expires_at", "")),
            )
        )
    print_table(rows)
    return 0


def processor(fraction: float) -> str:
    """``100% GPU``, ``100% CPU`` or a split such as ``48%/52% CPU/GPU``."""
    if fraction >= 0.995:
        return "100% GPU"
    if fraction <= 0.005:
        return "100% CPU"
    gpu = round(fraction * 100)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def _until(expires: str) -> str:
    import datetime as dt

    if not expires or expires.startswith("2318"):
        return "Forever"
    try:
        when = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
    except ValueError:
        return expires
    seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if seconds < 60:
        return f"{max(0, int(seconds))} seconds from now"
    return f"{int(seconds // 60)} minutes from now"


def _stop(args: argparse.Namespace) -> int:
    import httpx

    base = daemon_url()
    try:
        r = httpx.post(
            base + "/api/generate", json={"model": args.model, "keep_alive": 0}, timeout=60, headers=_headers()
        )
    except httpx.TransportError:
        raise errors.RegistryUnreachable(f"no runtime answers at {base}") from None
    if r.status_code >= 400:
        raise errors.RequestFailed(errors.response_text(r), r.status_code)
    return 0
