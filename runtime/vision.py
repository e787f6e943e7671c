"""Images for models with a projector layer (an mmproj GGUF), through llama.cpp's mtmd library.

The prompt text carries one marker per image where the image belongs. mtmd splits it into text
and image chunks; text is decoded as usual and each image is encoded by the projector and decoded
as embeddings at its positions. Image positions have no token ids: they are recorded as -1 in the
model's token history, so a later prompt never matches them as a cached prefix.

All calls happen on the owning engine's thread."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

IMAGE_TOKEN = -1  # what image positions hold in the token history

_quiet_lock = threading.Lock()
_quiet_callback: Any = None


def image_marker() -> str:
    """The text that stands for one image in a prompt."""
    import llama_cpp.mtmd_cpp as mtmd

    return str(mtmd.mtmd_default_marker().decode())


class BadImage(ValueError):
    """An image the projector cannot take (not a picture, too many for the prompt …)."""


def _silence_mtmd() -> None:
    """mtmd logs every load and encode to stderr; route it nowhere (once per process)."""
    global _quiet_callback
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    with _quiet_lock:
        if _quiet_callback is not None:
            return
        _quiet_callback = llama_cpp.llama_log_callback(lambda level, text, data: None)
        lib = mtmd._libmtmd
        for name in ("mtmd_log_set", "mtmd_helper_log_set"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [llama_cpp.llama_log_callback, ctypes.c_void_p]
                fn.restype = None
                fn(_quiet_callback, None)


class Vision:
    """A projector bound to one loaded model."""

    def __init__(self, llm: Any, projector_path: str, n_threads: int, use_gpu: bool) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        _silence_mtmd()
        self._mtmd = mtmd
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        params.n_threads = n_threads
        ctx = mtmd.mtmd_init_from_file(projector_path.encode(), llm.model, params)
        if not ctx:
            raise ValueError(f"cannot load the projector {projector_path}")
        if not mtmd.mtmd_support_vision(ctx):
            mtmd.mtmd_free(ctx)
            raise ValueError("the projector has no vision encoder")
        self._ctx = ctx
        self.marker = mtmd.mtmd_default_marker().decode()
        self.newline = [int(t) for t in llm.tokenize(b"\n", add_bos=False, special=False)]

    def close(self) -> None:
        if self._ctx:
            self._mtmd.mtmd_free(self._ctx)
            self._ctx = None

    def evaluate(
        self,
        ctx: Any,
        text: str,
        images: list[bytes],
        seq_id: int,
        n_ctx: int,
        n_batch: int,
        decode_text: Callable[[list[int], int], None],
    ) -> list[int]:
        """Decode ``text`` with ``images`` at its markers into sequence ``seq_id`` of the llama.cpp
        context ``ctx`` (empty), text through ``decode_text(tokens, first_position)``; the token
        history (image positions as -1), the last token's logits ready for sampling."""
        import llama_cpp

        mtmd = self._mtmd
        if text.count(self.marker) != len(images):
            raise BadImage(f"the prompt places {text.count(self.marker)} image(s) but {len(images)} were given")
        bitmaps = []
        chunks = None
        try:
            for i, data in enumerate(images):
                buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self._ctx, buffer, len(data), False)
                if not bitmap:
                    raise BadImage(f"image {i + 1} is not a picture the model can read (PNG, JPEG, BMP, GIF …)")
                bitmaps.append(bitmap)
            encoded = text.encode()
            prompt = mtmd.mtmd_input_text()
            prompt.text, prompt.text_len = encoded, len(encoded)
            prompt.add_special, prompt.parse_special = True, True
            chunks = mtmd.mtmd_input_chunks_init()
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            if mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(prompt), array, len(bitmaps)) != 0:
                raise BadImage("the prompt and its images could not be tokenized together")
            count = mtmd.mtmd_input_chunks_size(chunks)
            parts = [mtmd.mtmd_input_chunks_get(chunks, i) for i in range(count)]
            needed = sum(mtmd.mtmd_input_chunk_get_n_tokens(part) for part in parts)
            if needed >= n_ctx:
                raise BadImage(f"the prompt with its images needs {needed} tokens; the context holds {n_ctx}")
            history: list[int] = []
            last_is_text = False
            for chunk in parts:
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    tokens = [int(pointer[j]) for j in range(n.value)]
                    if tokens:
                        decode_text(tokens, len(history))
                        history += tokens
                        last_is_text = True
                    continue
                n_past = llama_cpp.llama_pos(0)
                status = mtmd.mtmd_helper_eval_chunk_single(
                    self._ctx,
                    ctx,
                    chunk,
                    llama_cpp.llama_pos(len(history)),
                    llama_cpp.llama_seq_id(seq_id),
                    n_batch,
                    False,
                    ctypes.byref(n_past),
                )
                if status != 0:
                    raise RuntimeError(f"encoding an image failed ({status})")
                history += [IMAGE_TOKEN] * (n_past.value - len(history))
                last_is_text = False
            if not last_is_text:
                # Sampling needs logits from a decoded token: end the prompt with a newline.
                newline = self.newline
                decode_text(newline, len(history))
                history += newline
            return history
        finally:
            if chunks is not None:
                mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
