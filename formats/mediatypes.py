"""Every media-type string that Hangar reads or writes."""

# Manifests
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

IMAGE_MANIFESTS = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_MANIFESTS = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
ALL_MANIFESTS = IMAGE_MANIFESTS | INDEX_MANIFESTS

# Configs
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

# Generic layers
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCTET_STREAM = "application/octet-stream"

# Ollama layers
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"
OLLAMA_ADAPTER = "application/vnd.ollama.image.adapter"
OLLAMA_DRAFT = "application/vnd.ollama.image.draft"
OLLAMA_TEMPLATE = "application/vnd.ollama.image.template"
OLLAMA_PROMPT = "application/vnd.ollama.image.prompt"  # legacy name for the template
OLLAMA_SYSTEM = "application/vnd.ollama.image.system"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
OLLAMA_MESSAGES = "application/vnd.ollama.image.messages"
OLLAMA_LICENSE = "application/vnd.ollama.image.license"
OLLAMA_EMBED = "application/vnd.ollama.image.embed"  # obsolete, ignored
OLLAMA_TENSOR = "application/vnd.ollama.image.tensor"
OLLAMA_JSON = "application/vnd.ollama.image.json"

# Hangar's own layers
HANGAR_README = "application/vnd.hangar.image.readme"  # Markdown, UTF-8 (hangar readme; the web site's model page)
