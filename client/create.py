"""Creating a model in the store (``hangar create``, ``POST /api/create``), as Ollama builds one.

The parts arrive as blobs already in the store (the CLI hashes local files in; the daemon receives
them on ``POST /api/blobs/<digest>``). Layers, in order:

1. the base: every layer of an existing model (``from``; pulled when missing), each marked with the
   parent's name, or the given GGUF files, each one layer whose type comes from its metadata
   (a model, a LoRA adapter, or a vision projector);
2. adapters;
3. the model layer quantized, when asked (llama.cpp's quantizer, F32/F16/BF16 sources only);
4. template, system and messages replace the parent's; licenses are added to the parent's;
   parameters are merged over the parent's into one params layer.

The config is built from the model layer's GGUF metadata (family, parameter count, quantization),
inheriting the parent's renderer, parser and requirement when not given. The manifest is written
last, atomically: an interrupted create leaves at most unreferenced blobs (``hangar prune``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client import errors
from client.config import ClientSettings
from client.gguf_header import GGUFError
from client.model_info import file_type_name, human_count, inspect, read_gguf_metadata
from client.progress import Progress, ProgressCallback, no_progress
from client.store import Store
from registry.oci import mediatypes as mt
from registry.oci.digest import Digest
from registry.oci.manifest import Descriptor, Manifest
from registry.oci.names import ModelName
from registry.oci.options import OPTION_TYPES, OptionError, coerce

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
    """The request cannot make a model (bad parts, a bad template, an impossible quantization)."""


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
    messages: list[dict[str, str]] = field(default_factory=list)
    requires: str | None = None
    renderer: str | None = None
    parser: str | None = None
    quantize: str | None = None
    insecure: bool = False


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
    name = _parse_name(store, settings, request.name)
    wanted = quantize_type(request.quantize) if request.quantize else None
    if not request.base and not request.files:
        raise CreateError("neither 'from' or 'files' was specified")
    template_check(request.template)
    in_use = store.referenced_digests()  # layers some model already has are "existing"

    layers: list[Descriptor] = []
    parent_config: dict[str, Any] = {}
    parent_params: dict[str, Any] = {}
    if request.base:
        layers, parent_config, parent_params = _parent_layers(store, settings, request, progress)
    files = dict(request.files)
    for file_name, digest in files.items():
        if not store.has_blob(digest):
            raise CreateError(f"{file_name}: no blob {digest} in the store (upload it first)")
    checkpoint = {k: v for k, v in files.items() if not k.endswith(".gguf") and _is_checkpoint_part(k)}
    if checkpoint:
        layers.append(_convert_checkpoint(store, checkpoint, progress))
    for file_name, digest in files.items():
        if file_name not in checkpoint:
            layers.append(_file_layer(store, file_name, digest, progress))
    if len([d for d in layers if d.media_type == mt.OLLAMA_MODEL]) > 1:
        raise CreateError("more than one model file: give one GGUF model (projectors and adapters are recognised)")
    adapters = dict(request.adapters)
    if any(file_name.endswith("adapter_config.json") for file_name in adapters):
        model = next((d for d in layers if d.media_type == mt.OLLAMA_MODEL), None)
        if model is None:
            raise CreateError("an adapter needs a model to adapt")
        layers = [d for d in layers if d.media_type != mt.OLLAMA_ADAPTER]
        layers.append(_convert_adapter(store, adapters, model, checkpoint, progress))
        adapters = {}
    for file_name, digest in adapters.items():
        kind = _gguf_kind(store, file_name, digest)
        if kind != mt.OLLAMA_ADAPTER:
            raise CreateError(f"{file_name}: not a LoRA adapter GGUF (general.type is not 'adapter')")
        layers = [d for d in layers if d.media_type != mt.OLLAMA_ADAPTER]  # one adapter, the latest
        layers.append(Descriptor(mt.OLLAMA_ADAPTER, digest, store.blob_path(digest).stat().st_size))
    model_layer = next((d for d in layers if d.media_type == mt.OLLAMA_MODEL), None)
    if model_layer is None:
        raise CreateError("no model weights: FROM must name a model or a GGUF model file")
    if wanted:
        quantized = _quantize(store, model_layer, wanted, progress)
        layers = [quantized if d is model_layer else d for d in layers]
        model_layer = quantized

    def replace(media_type: str, data: bytes | None) -> None:
        nonlocal layers
        if data is None:
            return
        layers = [d for d in layers if d.media_type != media_type]
        layers.append(_bytes_layer(store, media_type, data))

    replace(mt.OLLAMA_TEMPLATE, request.template.encode() if request.template is not None else None)
    replace(mt.OLLAMA_SYSTEM, request.system.encode() if request.system is not None else None)
    for text in request.licenses:
        layers.append(_bytes_layer(store, mt.OLLAMA_LICENSE, text.encode()))
    if request.parameters:
        merged = {**parent_params, **_typed(request.parameters)}
        replace(mt.OLLAMA_PARAMS, json.dumps(merged).encode())
    if request.messages:
        replace(mt.OLLAMA_MESSAGES, json.dumps(request.messages).encode())

    config = _config(store, model_layer, layers, parent_config, request)
    config_layer = _bytes_layer(store, mt.DOCKER_CONFIG, json.dumps(config).encode() + b"\n")
    new_layers = 0
    for layer in [*layers, config_layer]:
        reused = layer.digest in in_use
        new_layers += 0 if reused else 1
        verb = "using existing layer" if reused else "creating new layer"
        progress(Progress(f"{verb} {layer.digest}"))
    progress(Progress("writing manifest"))
    manifest = Manifest.build(config_layer, layers)
    store.put_manifest(name, manifest.raw)
    progress(Progress("success"))
    return CreateResult(name, manifest, new_layers)


def template_check(template: str | None) -> None:
    if template is None:
        return
    from runtime.gotemplate import Template, TemplateError

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
    layers = [
        Descriptor(d.media_type, d.digest, d.size, {**d.extra, "from": d.extra.get("from") or shortest})
        for d in parent.manifest.layers
    ]
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


def _is_checkpoint_part(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".safetensors") or base.endswith(".safetensors.index.json") or base in CHECKPOINT_FILES


@contextlib.contextmanager
def _linked(store: Store, files: Mapping[str, Digest]) -> Iterator[Path]:
    """A folder holding ``files`` under their names (links to the blobs), for the converter."""
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as folder:
        root = Path(folder)
        for name, digest in files.items():
            target = root / name.rsplit("/", 1)[-1]
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
                    "phi3": "Phi3ForCausalLM"}  # fmt: skip


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
    """A GGUF's header without its arrays, read within bounds (see client.gguf_header): a file
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


def _config(
    store: Store, model: Descriptor, layers: list[Descriptor], parent: dict[str, Any], request: CreateRequest
) -> dict[str, Any]:
    meta, tensors, _ = _metadata(store.blob_path(model.digest), "the model")
    family = str(meta.get("general.architecture") or parent.get("model_family") or "")
    families = [family] if family else []
    if any(d.media_type == mt.OLLAMA_PROJECTOR for d in layers):
        families.append("clip")
    count = meta.get("general.parameter_count") or sum(int(t["elements"]) for t in tensors)
    config: dict[str, Any] = {
        "model_format": "gguf",
        "model_family": family,
        "model_families": families or None,
        "model_type": human_count(int(count)) if count else parent.get("model_type", ""),
        "file_type": file_type_name(meta.get("general.file_type")) or parent.get("file_type", ""),
    }
    for key in ("renderer", "parser", "requires"):
        value = getattr(request, key) or parent.get(key)
        if value:
            config[key] = value
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
    if current == wanted:
        return model
    if current not in UNQUANTIZED:
        raise CreateError(f"quantization is only supported for F16, BF16 and F32 models (this one is {current})")
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
            raise CreateError(f"quantizing to {wanted} failed (llama.cpp returned {outcome[:1]})")
        progress(Progress(status, "0000000000000000000", total, total))
        progress(Progress("verifying conversion"))
        if file_type_name(_metadata(tmp, "the quantized model")[0].get("general.file_type")) != wanted:
            raise CreateError(f"quantizing to {wanted} wrote a file of another type")
        digest, size = store.adopt_file(tmp)
    return Descriptor(mt.OLLAMA_MODEL, digest, size)
