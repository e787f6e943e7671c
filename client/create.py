"""Creating a model in the store (``hangar create``, ``POST /api/create``), as Ollama builds one.

The parts arrive as blobs already in the store (the CLI hashes local files in; the daemon receives
them on ``POST /api/blobs/<digest>``). Everything that can be checked without doing the work
(name, quantization type, template, parameters, messages, ``info``) is checked first, before any
progress is reported, so that ``/api/create`` answers those as a plain 400. Layers, in order:

1. the base: every layer of an existing model (``from``; pulled when missing), each marked with
   the name of that model (the immediate parent), or the given GGUF files, each one layer whose
   type comes from its metadata (a model, a LoRA adapter, or a vision projector);
2. adapters, appended to the parent's (stacked, as Ollama does);
3. the model layer quantized, when asked (llama.cpp's quantizer, F32/F16/BF16 sources only);
4. a non-empty template or system prompt replaces the parent's; licenses are added to the
   parent's; parameters are merged over the parent's into one params layer; non-empty messages
   replace the parent's.

The config is built from the model layer's GGUF metadata (family, parameter count, quantization)
and ``info``'s overrides, inheriting the parent's renderer, parser, requirement, model format and
capabilities when not given. JSON blobs (config, params, messages, the manifest) are written as
Go's encoder writes them (client.gojson), so the same inputs give Ollama's digests. The manifest is
written last, atomically; then the blobs only the replaced version used are deleted. An
interrupted create leaves at most unreferenced blobs (``hangar prune``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client import errors
from client.config import ClientSettings
from client.gojson import dumps as go_json
from client.model_info import inspect, read_gguf_metadata
from client.progress import Progress, ProgressCallback, no_progress
from client.store import Store
from formats import mediatypes as mt
from formats.description import file_type_name, human_count
from formats.digest import Digest
from formats.gguf import GGUFError
from formats.manifest import Descriptor, Manifest
from formats.names import ModelName
from formats.options import OPTION_TYPES, OptionError, coerce

# The types llama.cpp's quantizer writes, by the names people use (case-insensitive).
QUANTIZE_TYPES = {
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "F32": "LLAMA_FTYPE_ALL_F32",
}
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
UNQUANTIZED = ("F32", "F16", "BF16")
# Bits per weight, roughly, for the progress estimate of a quantization.
_BITS = {
    "Q4_0": 4.5, "Q4_1": 5, "Q5_0": 5.5, "Q5_1": 6, "Q8_0": 8.5, "Q3_K_S": 3.5, "Q3_K_M": 3.9, "Q3_K_L": 4.3,
    "Q4_K_S": 4.6, "Q4_K_M": 4.9, "Q5_K_S": 5.5, "Q5_K_M": 5.7, "Q6_K": 6.6, "F16": 16, "BF16": 16, "F32": 32,
}  # fmt: skip


class CreateError(errors.HangarError):
    """The request cannot make a model (bad parts, a bad template, an impossible quantization).
    ``status``: the HTTP status ``/api/create`` answers it with (Ollama's: 400 for a bad request,
    500 for what went wrong doing the work)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class CreateRequest:
    """What a Modelfile (or an ``/api/create`` body) asks for; ``files`` and ``adapters`` name
    blobs already in the store."""

    name: str
    base: str | None = None
    files: Mapping[str, Digest] = field(default_factory=dict)
    adapters: Mapping[str, Digest] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    licenses: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    requires: str | None = None
    renderer: str | None = None
    parser: str | None = None
    quantize: str | None = None
    insecure: bool = False
    # Ollama's config overrides (``info`` in /api/create): capabilities, model_family, base_name,
    # quantization_level, parameter_size, context_length, embedding_length (checked by the caller).
    info: dict[str, Any] = field(default_factory=dict)
    draft_files: Mapping[str, Digest] = field(default_factory=dict)
    draft_quantize: str | None = None


@dataclass
class CreateResult:
    name: ModelName
    manifest: Manifest
    new_layers: int


def quantize_type(text: str) -> str:
    """The canonical name of a requested quantization type, or CreateError."""
    wanted = ALIASES.get(text.strip().upper(), text.strip().upper())
    if wanted not in QUANTIZE_TYPES:
        supported = ", ".join(t.lower() if t[0] == "Q" else t for t in QUANTIZE_TYPES)
        raise CreateError(f"unsupported quantization type {text} - supported types are {supported}")
    return wanted


def create(
    store: Store, settings: ClientSettings, request: CreateRequest, progress: ProgressCallback = no_progress
) -> CreateResult:
    store.ensure()
    # Checks that need no work come first: nothing has been reported yet when they fail.
    name = _parse_name(store, settings, request.name)
    wanted = quantize_type(request.quantize) if request.quantize else None
    if not request.base and not request.files:
        raise CreateError("neither 'from' or 'files' was specified")
    if request.draft_files or request.draft_quantize:
        what = "draft_files" if request.draft_files else "draft_quantize"
        raise CreateError(f"{what}: draft models (DRAFT, --draft-quantize) are not supported yet")
    if request.template:
        template_check(request.template)
    parameters = _typed(request.parameters)
    messages = [normalise_message(m, f"messages[{i}]") for i, m in enumerate(request.messages)]
    for file_name, digest in [*request.files.items(), *request.adapters.items()]:
        if not store.has_blob(digest):
            raise CreateError(f"{file_name}: no blob {digest} in the store (upload it first)", 500)
    peft = any(file_name.endswith("adapter_config.json") for file_name in request.adapters)
    if len(request.adapters) > 1 and not peft:  # a PEFT folder is several files, one adapter
        raise CreateError("only one adapter is currently supported")
    in_use = store.referenced_digests()  # layers some model already has are "existing"

    layers: list[Descriptor] = []
    parent_config: dict[str, Any] = {}
    parent_params: dict[str, Any] = {}
    if request.base:
        layers, parent_config, parent_params = _parent_layers(store, settings, request, progress)
    files = dict(request.files)
    checkpoint = {k: v for k, v in files.items() if not k.endswith(".gguf") and _is_checkpoint_part(k)}
    if checkpoint:
        layers.append(_convert_checkpoint(store, checkpoint, progress))
    for file_name, digest in files.items():
        if file_name not in checkpoint:
            layers.append(_file_layer(store, file_name, digest, progress))
    if len([d for d in layers if d.media_type == mt.OLLAMA_MODEL]) > 1:
        raise CreateError("more than one model file: give one GGUF model (projectors and adapters are recognised)")
    # Adapters are appended after the parent's: a child of a model with an adapter keeps it.
    adapters = dict(request.adapters)
    if peft:
        model = next((d for d in layers if d.media_type == mt.OLLAMA_MODEL), None)
        if model is None:
            raise CreateError("an adapter needs a model to adapt")
        layers.append(_convert_adapter(store, adapters, model, checkpoint, progress))
        adapters = {}
    for file_name, digest in adapters.items():
        kind = _gguf_kind(store, file_name, digest)
        if kind != mt.OLLAMA_ADAPTER:
            raise CreateError(f"{file_name}: not a LoRA adapter GGUF (general.type is not 'adapter')")
        layers.append(Descriptor(mt.OLLAMA_ADAPTER, digest, store.blob_path(digest).stat().st_size))
    model_layer = next((d for d in layers if d.media_type == mt.OLLAMA_MODEL), None)
    if model_layer is None:
        raise CreateError("no model weights: FROM must name a model or a GGUF model file")
    if wanted:
        quantized = _quantize(store, model_layer, wanted, progress)
        layers = [quantized if d is model_layer else d for d in layers]
        model_layer = quantized

    def replace(media_type: str, data: bytes) -> None:
        nonlocal layers
        layers = [d for d in layers if d.media_type != media_type]
        layers.append(_bytes_layer(store, media_type, data))

    # Empty values leave the parent's in place, as in Ollama (TEMPLATE "" is no template change).
    if request.template:
        replace(mt.OLLAMA_TEMPLATE, request.template.encode())
    if request.system:
        replace(mt.OLLAMA_SYSTEM, request.system.encode())
    for text in request.licenses:
        layers.append(_bytes_layer(store, mt.OLLAMA_LICENSE, text.encode()))
    merged = {**parent_params, **parameters}
    if merged:  # Ollama re-encodes the merged parameters even when none are new
        replace(mt.OLLAMA_PARAMS, go_json(dict(sorted(merged.items()))))
    if messages:
        replace(mt.OLLAMA_MESSAGES, go_json(messages))

    config = _config(store, model_layer, parent_config, request)
    config_layer = _bytes_layer(store, mt.DOCKER_CONFIG, go_json(config))
    new_layers = 0
    for layer in [*layers, config_layer]:
        reused = layer.digest in in_use
        new_layers += 0 if reused else 1
        verb = "using existing layer" if reused else "creating new layer"
        progress(Progress(f"{verb} {layer.digest}"))
    progress(Progress("writing manifest"))
    manifest = Manifest.parse(_manifest_bytes(config_layer, layers))
    _write_and_prune(store, name, manifest)
    progress(Progress("success"))
    return CreateResult(name, manifest, new_layers)


def _manifest_bytes(config: Descriptor, layers: list[Descriptor]) -> bytes:
    """The manifest as Ollama's WriteManifest encodes it (descriptor keys: mediaType, digest,
    size, then from and name when set)."""

    def descriptor(d: Descriptor) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": d.media_type, "digest": str(d.digest), "size": d.size}
        out.update({k: d.extra[k] for k in ("from", "name") if d.extra.get(k)})
        return out

    return go_json(
        {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST,
            "config": descriptor(config),
            "layers": [descriptor(d) for d in layers],
        }
    )


def _write_and_prune(store: Store, name: ModelName, manifest: Manifest) -> None:
    """Write the manifest, then delete the blobs of the version it replaces that no model uses
    any more (§8.6 step 6), under the lock pulls and removals take for the same work."""
    from client.store_ops import delete_unused_blobs

    with store.lock("manifests"):
        try:
            old = {d.digest for d in store.get(name).manifest.blobs()}
        except errors.ModelNotFound:
            old = set()
        store.put_manifest(name, manifest.raw)
        delete_unused_blobs(store, old - {d.digest for d in manifest.blobs()})


# Message roles a create request may seed (the Modelfile's MESSAGE takes the first three).
MESSAGE_ROLES = ("system", "user", "assistant", "tool")


def normalise_message(raw: Any, where: str) -> dict[str, Any]:
    """A seed message as Ollama stores it: role (lower-cased), content, then thinking, images
    (base64, re-encoded padded), tool_calls, tool_name and tool_call_id when set."""
    if not isinstance(raw, Mapping):
        raise CreateError(f"{where}: a message must be an object")
    role = raw.get("role")
    role = role.lower() if isinstance(role, str) else role
    if role not in MESSAGE_ROLES:
        raise CreateError(f"{where}: needs a role (system, user, assistant or tool)")
    out: dict[str, Any] = {"role": role, "content": _text_field(raw, "content", where)}
    if thinking := _text_field(raw, "thinking", where):
        out["thinking"] = thinking
    images = raw.get("images") or []
    if not isinstance(images, list):
        raise CreateError(f"{where}: images must be an array of base64 strings")
    if images:
        out["images"] = [_base64(image, f"{where}.images[{j}]") for j, image in enumerate(images)]
    tool_calls = raw.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise CreateError(f"{where}: tool_calls must be an array")
    if tool_calls:
        out["tool_calls"] = [_tool_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(tool_calls)]
    for key in ("tool_name", "tool_call_id"):
        if value := _text_field(raw, key, where):
            out[key] = value
    return out


def _text_field(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CreateError(f"{where}: {key} must be a string")
    return value


def _base64(value: Any, where: str) -> str:
    import base64
    import binascii

    if not isinstance(value, str):
        raise CreateError(f"{where}: an image must be a base64 string")
    try:
        return base64.b64encode(base64.b64decode(value, validate=True)).decode()
    except (binascii.Error, ValueError):
        raise CreateError(f"{where}: illegal base64 data") from None


def _tool_call(raw: Any, where: str) -> dict[str, Any]:
    function = raw.get("function") if isinstance(raw, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise CreateError(f"{where}: needs a function with a name")
    index = function.get("index", 0)
    arguments = function.get("arguments") or {}
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(arguments, Mapping):
        raise CreateError(f"{where}: function.index must be an integer and function.arguments an object")
    out: dict[str, Any] = {}
    if isinstance(raw.get("id"), str) and raw["id"]:
        out["id"] = raw["id"]
    out["function"] = {"index": index, "name": function["name"], "arguments": dict(arguments)}
    return out


def template_check(template: str | None) -> None:
    if template is None:
        return
    from formats.gotemplate import Template, TemplateError

    try:
        Template(template)
    except TemplateError as e:
        raise CreateError(f"template error: {e}") from None


# -- parts -------------------------------------------------------------------------------------------


def _parse_name(store: Store, settings: ClientSettings, text: str) -> ModelName:
    name = store.parse_name(text, settings.default_host)
    if name.tag == "":
        raise errors.InvalidName(f"invalid model name {text!r}")
    return name


def _parent_layers(
    store: Store, settings: ClientSettings, request: CreateRequest, progress: ProgressCallback
) -> tuple[list[Descriptor], dict[str, Any], dict[str, Any]]:
    assert request.base is not None
    parent_name = _parse_name(store, settings, request.base)
    try:
        parent = store.get(parent_name)
    except errors.ModelNotFound:
        import asyncio

        from client.pull import PullOptions, pull

        asyncio.run(pull(parent_name, store, settings, PullOptions(insecure=request.insecure), progress))
        parent = store.get(parent_name)
    info = inspect(store, parent, read_gguf=False)
    shortest = parent_name.display()
    # Each inherited layer names the model it was taken from, the immediate parent (as Ollama's
    # NewLayerFromLayer): push mounts it from there.
    layers = []
    for d in parent.manifest.layers:
        extra = {"from": shortest, **({"name": d.extra["name"]} if d.extra.get("name") else {})}
        layers.append(Descriptor(d.media_type, d.digest, d.size, extra))
    return layers, info.config, dict(info.parameters)


def _file_layer(store: Store, file_name: str, digest: Digest, progress: ProgressCallback) -> Descriptor:
    if file_name.endswith((".bin", ".pth", ".pt")):
        raise CreateError(f"{file_name}: PyTorch pickles are not imported (they can run code); use safetensors")
    progress(Progress("parsing GGUF"))
    kind = _gguf_kind(store, file_name, digest)
    return Descriptor(kind, digest, store.blob_path(digest).stat().st_size)


# Files of a Hugging Face checkpoint folder that the conversion reads.
CHECKPOINT_FILES = (
    "config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "added_tokens.json", "chat_template.jinja",
)  # fmt: skip


# An embedding model as sentence-transformers saves it: its modules, and WordPiece's vocab.txt.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "vocab.txt")
MODULE_FILES = ("config.json", "model.safetensors")


def _is_checkpoint_part(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return (base.endswith(".safetensors") or base.endswith(".safetensors.index.json")
            or base in CHECKPOINT_FILES or base in SENTENCE_TRANSFORMERS_FILES)  # fmt: skip


def module_files(folder: Path) -> list[Path]:
    """The files of a sentence-transformers folder's modules (``1_Pooling/config.json``,
    ``2_Dense/model.safetensors`` …) that modules.json names, which the conversion reads."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    found = []
    for module in modules if isinstance(modules, list) else []:
        path = module.get("path") if isinstance(module, dict) else None
        if isinstance(path, str) and _MODULE_DIR.fullmatch(path):
            found += [folder / path / name for name in MODULE_FILES if (folder / path / name).is_file()]
    return found


# A module's folder: "1_Pooling", "2_Dense" (the files in it keep their folder through the create).
_MODULE_DIR = re.compile(r"[0-9]+_[A-Za-z0-9]+")


def _linked_name(name: str) -> str:
    """Where a file goes in the conversion's folder: by its base name, except the files of a
    sentence-transformers module, which stay in their module's folder."""
    parts = name.split("/")
    if len(parts) >= 2 and _MODULE_DIR.fullmatch(parts[-2]):
        return "/".join(parts[-2:])
    return parts[-1]


@contextlib.contextmanager
def _linked(store: Store, files: Mapping[str, Digest]) -> Iterator[Path]:
    """A folder holding ``files`` under their names (links to the blobs), for the converter."""
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as folder:
        root = Path(folder)
        for name, digest in files.items():
            target = root / _linked_name(name)
            target.parent.mkdir(exist_ok=True)
            os.symlink(store.blob_path(digest), target)
        yield root


def _convert_checkpoint(store: Store, files: Mapping[str, Digest], progress: ProgressCallback) -> Descriptor:
    from client.convert import CheckpointError, convert_model

    if not any(name.endswith(".safetensors") for name in files):
        raise CreateError("no *.safetensors weights among the files (config.json alone is not a model)")
    progress(Progress("converting model"))
    with _linked(store, files) as folder, store.temp_file() as (tmp, f):
        f.close()
        try:
            convert_model(folder, tmp, lambda done, total: progress(Progress("converting model", None, total, done)))
        except (CheckpointError, KeyError, ValueError) as e:
            raise CreateError(f"converting the checkpoint failed: {e}") from None
        _verify_loads(tmp)
        digest, size = store.adopt_file(tmp)
    return Descriptor(mt.OLLAMA_MODEL, digest, size)


def _convert_adapter(
    store: Store,
    files: Mapping[str, Digest],
    model: Descriptor,
    checkpoint: Mapping[str, Digest],
    progress: ProgressCallback,
) -> Descriptor:
    from client.convert import CheckpointError, convert_adapter

    progress(Progress("converting adapter"))
    base_config = _hf_config(store, model, checkpoint)
    with _linked(store, files) as folder, store.temp_file() as (tmp, f):
        f.close()
        try:
            convert_adapter(folder, tmp, base_config)
        except (CheckpointError, KeyError, ValueError) as e:
            raise CreateError(f"converting the adapter failed: {e}") from None
        digest, size = store.adopt_file(tmp)
    return Descriptor(mt.OLLAMA_ADAPTER, digest, size)


# The Hugging Face architecture of each GGUF architecture the converter knows.
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                    "phi3": "Phi3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                    "gemma3": "Gemma3ForCausalLM"}  # fmt: skip


def _hf_config(store: Store, model: Descriptor, checkpoint: Mapping[str, Digest]) -> dict[str, Any]:
    """The base model's shape, for an adapter: its config.json, or read back from its GGUF."""
    for name, digest in checkpoint.items():
        if name.rsplit("/", 1)[-1] == "config.json":
            try:
                return dict(json.loads(store.blob_path(digest).read_bytes()))
            except (ValueError, TypeError, RecursionError) as e:
                raise CreateError(f"{name}: not a JSON object ({type(e).__name__})") from None
    meta = _metadata(store.blob_path(model.digest), "the model")[0]
    arch = str(meta.get("general.architecture"))
    if arch not in HF_ARCHITECTURES:
        raise CreateError(f"adapters in safetensors are converted for {', '.join(HF_ARCHITECTURES)} models, not {arch}")
    heads = int(meta[f"{arch}.attention.head_count"])
    return {
        "architectures": [HF_ARCHITECTURES[arch]],
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv") or heads),
        "hidden_size": int(meta[f"{arch}.embedding_length"]),
    }


def _verify_loads(path: Path) -> None:
    """llama.cpp must be able to read what was written (its vocabulary checks are strict)."""
    from llama_cpp import Llama

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    try:
        Llama(str(path), vocab_only=True, verbose=False).close()
    except (ValueError, RuntimeError) as e:
        raise CreateError(f"llama.cpp cannot load the converted model: {e}") from None


def _gguf_kind(store: Store, file_name: str, digest: Digest) -> str:
    path = store.blob_path(digest)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise CreateError(f"{file_name}: not a GGUF file")
    meta = _metadata(path, file_name)[0]
    kind = str(meta.get("general.type") or "")
    if kind == "adapter":
        return mt.OLLAMA_ADAPTER
    if kind in ("mmproj", "projector") or meta.get("general.architecture") == "clip":
        return mt.OLLAMA_PROJECTOR
    return mt.OLLAMA_MODEL


def _metadata(path: Path, what: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """A GGUF's header without its arrays, read within bounds (see formats.gguf): a file
    pulled from a registry may be hostile."""
    try:
        return read_gguf_metadata(path, max_array=0)
    except GGUFError as e:
        raise CreateError(f"{what}: not a valid GGUF file: {e}") from None


def _bytes_layer(store: Store, media_type: str, data: bytes) -> Descriptor:
    digest, size = store.add_blob_bytes(data)
    return Descriptor(media_type, digest, size)


def _typed(parameters: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if key not in OPTION_TYPES:
            raise CreateError(f"unknown parameter '{key}'")
        try:
            out[key] = coerce(key, value)
        except OptionError as e:
            raise CreateError(str(e)) from None
    return out


def _config(store: Store, model: Descriptor, parent: dict[str, Any], request: CreateRequest) -> dict[str, Any]:
    """The config blob, its keys in the order of Ollama's ConfigV2 (3.3): ``info`` overrides
    first, then what the model layer's GGUF says; renderer, parser, requires, model_format and
    capabilities inherited from the parent when not given."""
    meta, tensors, _ = _metadata(store.blob_path(model.digest), "the model")
    info = request.info
    renderer = request.renderer or parent.get("renderer") or ""
    parser = request.parser or parent.get("parser") or ""
    requires = request.requires or parent.get("requires") or ""
    inherited = parent.get("capabilities")
    capabilities = [c for c in inherited if isinstance(c, str)] if isinstance(inherited, list) else []
    capabilities += list(info.get("capabilities") or [])  # info's are added to the parent's, as Ollama does
    family = str(meta.get("general.architecture") or "")
    families = [info["model_family"]] if info.get("model_family") else []
    # Ollama counts the elements of every tensor (its GGUF reader overwrites parameter_count).
    count = sum(int(t["elements"]) for t in tensors)
    config: dict[str, Any] = {
        "model_format": str(parent.get("model_format") or "") or "gguf",
        "model_family": info.get("model_family") or family,
        "model_families": [*families, family],
        "model_type": info.get("parameter_size") or human_count(count),
        # Without general.file_type Ollama's config says "unknown" (it also does for 0, all-F32,
        # where Hangar says F32: see docs/create.md).
        "file_type": info.get("quantization_level") or file_type_name(meta.get("general.file_type")) or "unknown",
    }
    optional = {
        "renderer": renderer,
        "parser": parser,
        "requires": requires,
        "capabilities": capabilities,
        "context_length": info.get("context_length"),
        "embedding_length": info.get("embedding_length"),
        "base_name": info.get("base_name"),
    }
    config.update({key: value for key, value in optional.items() if value})  # Go's omitempty
    config.update(architecture="amd64", os="linux")
    return config


# -- quantization -------------------------------------------------------------------------------------


def _quantize(store: Store, model: Descriptor, wanted: str, progress: ProgressCallback) -> Descriptor:
    import llama_cpp

    # llama.cpp reports every tensor it converts through llama-cpp-python's logger: errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)

    source = store.blob_path(model.digest)
    meta = _metadata(source, "the model")[0]
    current = file_type_name(meta.get("general.file_type")) or "F32"
    # Ollama checks the source type first: a quantized model asked for its own type is an error
    # too; an unquantized one asked for its own type is left as it is.
    if current not in UNQUANTIZED:
        raise CreateError(f"quantization is only supported for F16, BF16 and F32 models (this one is {current})", 500)
    if current == wanted:
        return model
    status = f"quantizing {current} model to {wanted}"
    total = int(model.size * _BITS[wanted] / _BITS[current])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZE_TYPES[wanted])
    params.nthread = 0  # llama.cpp's choice: all cores
    outcome: list[int] = []
    with store.temp_file() as (tmp, f):
        f.close()
        worker = threading.Thread(
            target=lambda: outcome.append(
                llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
            ),
            name="quantize",
        )
        worker.start()
        while worker.is_alive():
            done = tmp.stat().st_size if tmp.exists() else 0
            progress(Progress(status, "0000000000000000000", total, min(done, total)))
            worker.join(0.25)
        if not outcome or outcome[0] != 0:
            raise CreateError(f"quantizing to {wanted} failed (llama.cpp returned {outcome[:1]})", 500)
        progress(Progress(status, "0000000000000000000", total, total))
        progress(Progress("verifying conversion"))
        if file_type_name(_metadata(tmp, "the quantized model")[0].get("general.file_type")) != wanted:
            raise CreateError(f"quantizing to {wanted} wrote a file of another type")
        digest, size = store.adopt_file(tmp)
    return Descriptor(mt.OLLAMA_MODEL, digest, size)
