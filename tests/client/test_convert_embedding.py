"""Embedding models (sentence-transformers folders) → GGUF, checked for real: tiny random BERT
(mean, CLS and last-token pooling) and EmbeddingGemma (``Gemma3TextModel`` with bidirectional
sliding-window attention and its two ``Dense`` projections) checkpoints are built with
transformers, their modules written as sentence-transformers writes them, converted, and the
vectors llama.cpp computes from the GGUF compared with the reference: transformers' hidden states
pooled, projected and normalised as the modules' own definitions say (numpy below).

Tolerance: cosine ≥ 0.9999 for the F32 conversion; after llama.cpp's quantization (as `hangar
create -q` does) ≥ 0.99995 for F16 and ≥ 0.998 for Q8_0 (measured worst over the texts: F32
0.99999996 BERT, 0.99999997 EmbeddingGemma; F16 0.9999995 and 0.9999988; Q8_0 0.99975 and 0.99934),
looser because these tiny random models amplify rounding and llama.cpp also rounds activations to 8
bits for Q8_0. A layout mistake is far outside even those: EmbeddingGemma's window written as 12
instead of 6 gives 0.74.
BERT's WordPiece tokenizer must give llama.cpp the token ids transformers gives on text in nine
scripts and on scripts it was not trained on ([UNK] words). One model is served end to end:
`hangar create` through the daemon, /api/embed, /api/embeddings, /v1/embeddings, `hangar run`, and
the 400s of chat and generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from client.convert import CheckpointError, convert_model
from client.model_info import read_gguf_metadata
from tests.checkpoints import CORPUS, GEMMA3_TEMPLATE, MULTILINGUAL, UNSEEN, write_spm_json_tokenizer
from tests.servers import REPO_ROOT, RuntimeProcess

TEXTS = [*MULTILINGUAL[:5], "a", "Hello world, hello world, hello world, hello world, hello world."]
POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "lasttoken": "pooling_mode_lasttoken",
}
GGUF_POOLING = {"mean": 1, "cls": 2, "lasttoken": 3}


# -- checkpoints ---------------------------------------------------------------------------------------


def write_wordpiece_tokenizer(folder: Path, lowercase: bool = True) -> int:
    """A BERT WordPiece tokenizer.json trained on the corpus (BertNormalizer, BertPreTokenizer,
    [CLS] $A [SEP]), as bert-base-uncased ships it; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS + MULTILINGUAL * 10, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]",
        "do_lower_case": lowercase, "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128,
    }))  # fmt: skip
    return int(tok.get_vocab_size())


def write_modules(folder: Path, pooling: str, dense: list[np.ndarray] | None = None, normalize: bool = True,
                  **pooling_extra: Any) -> None:  # fmt: skip
    """modules.json and the modules' folders, as sentence-transformers saves a model."""
    from safetensors.numpy import save_file

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (folder / "1_Pooling").mkdir(exist_ok=True)
    config: dict[str, Any] = {key: key == POOLING_KEYS[pooling] for key in POOLING_KEYS.values()}
    config.update({"word_embedding_dimension": 64, "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                   "include_prompt": True, **pooling_extra})  # fmt: skip
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    for weight in dense or []:
        i = len(modules)
        path = f"{i}_Dense"
        modules.append({"idx": i, "name": str(i), "path": path, "type": "sentence_transformers.models.Dense"})
        (folder / path).mkdir(exist_ok=True)
        (folder / path / "config.json").write_text(json.dumps({
            "in_features": weight.shape[1], "out_features": weight.shape[0], "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        }))  # fmt: skip
        save_file({"linear.weight": weight}, str(folder / path / "model.safetensors"))
    if normalize:
        i = len(modules)
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})  # fmt: skip
        (folder / f"{i}_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))


def build_bert(folder: Path, pooling: str = "mean", seed: int = 0) -> Any:
    """A tiny random BertModel as a sentence-transformers folder; returns the model (eval)."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab = write_wordpiece_tokenizer(folder)
    config = transformers.BertConfig(vocab_size=vocab + 3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=128, type_vocab_size=2,
                                     hidden_act="gelu", initializer_range=0.2)  # fmt: skip
    model = transformers.BertModel(config)
    _perturb_norms(model)
    model.eval().save_pretrained(folder, safe_serialization=True)
    write_modules(folder, pooling)
    return model


def build_nomic(folder: Path, seed: int = 0) -> Any:
    """A tiny random NomicBertModel (transformers' own: rotary positions, SwiGLU, no biases; it
    saves the Hub's tensor names, ``attn.Wqkv``, ``mlp.fc11`` …) with BERT's WordPiece, mean pooling."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab = write_wordpiece_tokenizer(folder)
    config = transformers.NomicBertConfig(vocab_size=vocab + 3, hidden_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                                          initializer_range=0.2, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 1000.0})  # fmt: skip
    model = transformers.NomicBertModel(config)
    _perturb_norms(model)
    model.eval().save_pretrained(folder, safe_serialization=True)
    write_modules(folder, "mean")
    return model


def build_embeddinggemma(folder: Path, seed: int = 0) -> tuple[Any, list[np.ndarray]]:
    """A tiny random EmbeddingGemma: a bidirectional Gemma3TextModel (five local layers with a
    6-token symmetric window, shorter than the texts, and a global one), mean pooling, Dense
    64→128→64 and Normalize; its tokenizer adds <bos> and <eos>, as EmbeddingGemma's does."""
    import torch
    import transformers
    from tokenizers import Tokenizer, processors

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = write_spm_json_tokenizer(folder, specials, "<bos>", "<eos>", GEMMA3_TEMPLATE, prepend=False,
                                     added=["<start_of_turn>", "<end_of_turn>"])  # fmt: skip
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    tok.save(str(folder / "tokenizer.json"))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok_config, "add_eos_token": True}))
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=6, max_position_embeddings=256,
        use_bidirectional_attention=True, initializer_range=0.2, rms_norm_eps=1e-6, attn_implementation="eager",
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
    )  # fmt: skip
    config.architectures = ["Gemma3TextModel"]
    model = transformers.Gemma3TextModel(config)
    _perturb_norms(model)
    model.eval().save_pretrained(folder, safe_serialization=True)
    rng = np.random.default_rng(seed)
    dense = [rng.normal(0, 0.2, (128, 64)).astype(np.float32), rng.normal(0, 0.2, (64, 128)).astype(np.float32)]
    write_modules(folder, "mean", dense)
    return model, dense


def _perturb_norms(model: Any) -> None:
    """Norm weights start as ones (or zeros) and biases as zeros: perturb them so that converting
    them is checked."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)


def reference(model: Any, ids: list[int], pooling: str, dense: list[np.ndarray] | None = None) -> np.ndarray:
    """sentence-transformers' vector: the last hidden states pooled (mean over the tokens, the
    first token, or the last), each Dense applied (``W x``, no bias, identity), normalised."""
    import torch

    with torch.no_grad():
        hidden = model(torch.tensor([ids])).last_hidden_state[0].numpy().astype(np.float64)
    vector = {"mean": hidden.mean(axis=0), "cls": hidden[0], "lasttoken": hidden[-1]}[pooling]
    for weight in dense or []:
        vector = weight.astype(np.float64) @ vector
    return vector / np.linalg.norm(vector)


def llama_cpp_vectors(gguf: Path, texts: list[str]) -> list[np.ndarray]:
    from llama_cpp import Llama

    llm = Llama(str(gguf), embedding=True, n_ctx=128, n_batch=128, n_ubatch=128, n_threads=2, verbose=False)
    try:
        return [np.asarray(llm.embed(text, normalize=False), dtype=np.float64) for text in texts]
    finally:
        llm.close()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def hf_ids(folder: Path, text: str) -> list[int]:
    import transformers

    return list(transformers.AutoTokenizer.from_pretrained(folder).encode(text))


# -- conversion ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_bert_vectors_match_sentence_transformers(pooling: str, tmp_path: Path) -> None:
    model = build_bert(tmp_path / "ckpt", pooling)
    out = tmp_path / "bert.gguf"
    assert convert_model(tmp_path / "ckpt", out) == "bert"
    meta = read_gguf_metadata(out, max_array=0)[0]
    assert meta["bert.pooling_type"] == GGUF_POOLING[pooling]
    assert meta["bert.attention.causal"] is False
    assert meta["tokenizer.ggml.model"] == "bert"
    assert meta["tokenizer.ggml.normalizer.lowercase"] is True
    for text, ours in zip(TEXTS, llama_cpp_vectors(out, TEXTS), strict=True):
        theirs = reference(model, hf_ids(tmp_path / "ckpt", text), pooling)
        assert cosine(ours, theirs) >= 0.9999, (text, cosine(ours, theirs))


def test_nomic_bert_vectors_match_sentence_transformers(tmp_path: Path) -> None:
    """transformers' NomicBertModel, and the same checkpoint with its config in the Hub's form
    (nomic's own code: ``n_embd``, ``rotary_emb_base`` …), give the reference's vectors."""
    model = build_nomic(tmp_path / "ckpt")
    assert convert_model(tmp_path / "ckpt", tmp_path / "nomic.gguf") == "nomic-bert"
    meta = read_gguf_metadata(tmp_path / "nomic.gguf", max_array=0)[0]
    assert meta["nomic-bert.rope.freq_base"] == 1000.0
    assert meta["nomic-bert.pooling_type"] == GGUF_POOLING["mean"]
    expected = [reference(model, hf_ids(tmp_path / "ckpt", text), "mean") for text in TEXTS]
    for text, ours, theirs in zip(TEXTS, llama_cpp_vectors(tmp_path / "nomic.gguf", TEXTS), expected, strict=True):
        assert cosine(ours, theirs) >= 0.9999, (text, cosine(ours, theirs))
    c = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    hub = {
        "architectures": ["NomicBertModel"], "model_type": "nomic_bert", "n_embd": c["hidden_size"],
        "n_head": c["num_attention_heads"], "n_layer": c["num_hidden_layers"], "n_inner": c["intermediate_size"],
        "n_positions": 8192, "max_trained_positions": 128, "layer_norm_epsilon": c["layer_norm_eps"],
        "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None, "activation_function": "swiglu", "causal": False, "prenorm": False,
        "qkv_proj_bias": False, "mlp_fc1_bias": False, "mlp_fc2_bias": False, "type_vocab_size": 2,
        "vocab_size": c["vocab_size"],
    }  # fmt: skip
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(hub))
    convert_model(tmp_path / "ckpt", tmp_path / "hub.gguf")
    assert read_gguf_metadata(tmp_path / "hub.gguf", max_array=0)[0]["nomic-bert.context_length"] == 128
    for text, ours, theirs in zip(TEXTS, llama_cpp_vectors(tmp_path / "hub.gguf", TEXTS), expected, strict=True):
        assert cosine(ours, theirs) >= 0.9999, (text, cosine(ours, theirs))
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**hub, "rotary_emb_interleaved": True}))
    with pytest.raises(CheckpointError, match=r"rotary_emb_interleaved True: llama.cpp's nomic-bert needs False"):
        convert_model(tmp_path / "ckpt", tmp_path / "x.gguf")


def test_embeddinggemma_vectors_match_sentence_transformers(tmp_path: Path) -> None:
    """Gemma 3's layers with bidirectional attention, local layers' symmetric window (6 tokens,
    shorter than most texts), mean pooling, then the two projections: each written wrongly moves
    the cosine far below the bound."""
    model, dense = build_embeddinggemma(tmp_path / "ckpt")
    out = tmp_path / "gemma.gguf"
    assert convert_model(tmp_path / "ckpt", out) == "gemma-embedding"
    meta = read_gguf_metadata(out, max_array=10)[0]
    assert meta["gemma-embedding.pooling_type"] == GGUF_POOLING["mean"]
    assert (meta["gemma-embedding.dense_2_feat_in"], meta["gemma-embedding.dense_2_feat_out"]) == (64, 128)
    assert (meta["gemma-embedding.dense_3_feat_in"], meta["gemma-embedding.dense_3_feat_out"]) == (128, 64)
    assert meta["gemma-embedding.attention.sliding_window"] == 6
    for text, ours in zip(TEXTS, llama_cpp_vectors(out, TEXTS), strict=True):
        ids = hf_ids(tmp_path / "ckpt", text)
        assert ids[0] == 2 and ids[-1] == 1  # <bos> … <eos>
        theirs = reference(model, ids, "mean", dense)
        assert cosine(ours, theirs) >= 0.9999, (text, cosine(ours, theirs))


def test_wordpiece_tokenizes_as_transformers(tmp_path: Path) -> None:
    """llama.cpp's ids for the converted WordPiece vocabulary equal the checkpoint tokenizer's
    ([CLS] … [SEP], lowercased, accents stripped, CJK characters alone, unknown words as [UNK]), on
    text in nine scripts and on scripts the vocabulary was not trained on; also cased."""
    import transformers
    from llama_cpp import Llama

    for lowercase in (True, False):
        folder = tmp_path / f"tok-{lowercase}"
        folder.mkdir()
        size = write_wordpiece_tokenizer(folder, lowercase)
        (folder / "config.json").write_text("{}")
        import gguf

        from client.convert.encoders import load_wordpiece, write_wordpiece

        w = gguf.GGUFWriter(str(folder / "v.gguf"), "bert")
        vocab = load_wordpiece(folder, size, 2)
        write_wordpiece(w, vocab)
        _minimal_bert(w, size)
        theirs = transformers.AutoTokenizer.from_pretrained(folder)
        llm = Llama(str(folder / "v.gguf"), vocab_only=True, verbose=False)
        try:
            unknown = 0
            for text in MULTILINGUAL + UNSEEN:
                ids = theirs.encode(text)
                unknown += ids.count(theirs.unk_token_id)
                assert llm.tokenize(text.encode(), add_bos=True) == ids, text
            assert unknown > 0  # the unseen scripts did reach [UNK]
        finally:
            llm.close()


def _minimal_bert(w: Any, n_vocab: int) -> None:
    """The keys a vocab-only load needs, and one tensor."""
    w.add_block_count(1)
    w.add_context_length(8)
    w.add_embedding_length(4)
    w.add_feed_forward_length(4)
    w.add_head_count(1)
    w.add_layer_norm_eps(1e-12)
    w.add_tensor("token_embd.weight", np.zeros((n_vocab, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(("kind", "bound"), [("F16", 0.99995), ("Q8_0", 0.998)])
def test_quantized_vectors_stay_close(kind: str, bound: float, tmp_path: Path) -> None:
    """The converted GGUF quantized by llama.cpp (as `hangar create -q` does), for BERT and
    EmbeddingGemma (its projections included)."""
    import llama_cpp

    bert = build_bert(tmp_path / "bert", "mean")
    gemma, dense = build_embeddinggemma(tmp_path / "gemma")
    for name, model, projections in (("bert", bert, None), ("gemma", gemma, dense)):
        convert_model(tmp_path / name, tmp_path / f"{name}.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
        quantized = tmp_path / f"{name}-{kind}.gguf"
        assert llama_cpp.llama_model_quantize(str(tmp_path / f"{name}.gguf").encode(), str(quantized).encode(),
                                              params) == 0  # fmt: skip
        for text, ours in zip(TEXTS, llama_cpp_vectors(quantized, TEXTS), strict=True):
            theirs = reference(model, hf_ids(tmp_path / name, text), "mean", projections)
            assert cosine(ours, theirs) >= bound, (name, text, cosine(ours, theirs))


def test_embedding_conversion_errors(tmp_path: Path) -> None:
    """What llama.cpp cannot compute is refused before any work, saying why."""
    build_bert(tmp_path / "b")
    (tmp_path / "b" / "modules.json").rename(tmp_path / "modules.json")
    with pytest.raises(CheckpointError, match=r"needs sentence-transformers' modules.json"):
        convert_model(tmp_path / "b", tmp_path / "x.gguf")
    (tmp_path / "modules.json").rename(tmp_path / "b" / "modules.json")
    write_modules(tmp_path / "b", "mean", pooling_mode_max_tokens=True)
    with pytest.raises(CheckpointError, match=r"llama.cpp pools by one of mean, cls or lasttoken"):
        convert_model(tmp_path / "b", tmp_path / "x.gguf")
    write_modules(tmp_path / "b", "mean", include_prompt=False)
    with pytest.raises(CheckpointError, match="include_prompt false"):
        convert_model(tmp_path / "b", tmp_path / "x.gguf")
    write_modules(tmp_path / "b", "mean", [np.zeros((64, 64), np.float32)])
    with pytest.raises(CheckpointError, match=r"module 2 \(sentence_transformers.models.Dense\) is not supported"):
        convert_model(tmp_path / "b", tmp_path / "x.gguf")
    write_modules(tmp_path / "b", "cls")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match=r"llama.cpp runs BERT with GELU"):
        convert_model(tmp_path / "b", tmp_path / "x.gguf")

    build_embeddinggemma(tmp_path / "g")
    dense_config = json.loads((tmp_path / "g" / "2_Dense" / "config.json").read_text())
    (tmp_path / "g" / "2_Dense" / "config.json").write_text(json.dumps({**dense_config, "bias": True}))
    with pytest.raises(CheckpointError, match="2_Dense: a Dense projection with a bias"):
        convert_model(tmp_path / "g", tmp_path / "x.gguf")
    (tmp_path / "g" / "2_Dense" / "config.json").write_text(json.dumps(dense_config))
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    (tmp_path / "g" / "config.json").write_text(json.dumps({**config, "use_bidirectional_attention": False}))
    with pytest.raises(CheckpointError, match="without use_bidirectional_attention is not an embedding model"):
        convert_model(tmp_path / "g", tmp_path / "x.gguf")
    (tmp_path / "g" / "config.json").write_text(json.dumps({**config, "architectures": ["RobertaModel"]}))
    with pytest.raises(CheckpointError, match=r"unsupported architecture.*BertModel, .*Gemma3TextModel"):
        convert_model(tmp_path / "g", tmp_path / "x.gguf")


# -- served ----------------------------------------------------------------------------------------------


def test_served_end_to_end(tmp_path: Path) -> None:
    """`hangar create` from the folder through `hangar serve` (the module files uploaded under
    their folders' names), then the embedding endpoints give the reference's vectors, chat and
    generate on it are a 400, `hangar run MODEL text` prints the vector as a JSON array, and
    `hangar create -q q8_0` makes a Q8_0 one that stays within the Q8_0 bound."""
    model = build_bert(tmp_path / "ckpt", "mean")
    (tmp_path / "Modelfile").write_text("FROM ./ckpt\n")
    runtime = RuntimeProcess(tmp_path / "home").start()

    def hangar(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "cli.main", *args], env=runtime.env, capture_output=True, text=True,
                           cwd=REPO_ROOT, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    try:
        out = hangar("create", "minilm", "-f", str(tmp_path / "Modelfile")).stdout
        assert "converting model" in out and out.rstrip().endswith("success")
        url = runtime.url
        texts = TEXTS[:3]
        expected = [reference(model, hf_ids(tmp_path / "ckpt", t), "mean") for t in texts]
        r = httpx.post(url + "/api/embed", json={"model": "minilm", "input": texts}, timeout=120)
        assert r.status_code == 200, r.text
        for vector, theirs in zip(r.json()["embeddings"], expected, strict=True):
            assert cosine(np.array(vector), theirs) >= 0.9999
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        legacy = httpx.post(url + "/api/embeddings", json={"model": "minilm", "prompt": texts[0]}, timeout=60).json()
        assert cosine(np.array(legacy["embedding"]), expected[0]) >= 0.9999
        openai = httpx.post(url + "/v1/embeddings", json={"model": "minilm", "input": texts[1]}, timeout=60).json()
        assert cosine(np.array(openai["data"][0]["embedding"]), expected[1]) >= 0.9999
        shown = httpx.post(url + "/api/show", json={"model": "minilm"}, timeout=60).json()
        assert shown["capabilities"] == ["embedding"]
        assert shown["details"]["family"] == "bert"
        refusals = [
            ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}, "error", "chat"),
            ("/api/generate", {"prompt": "hi"}, "error", "generate"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "openai", "chat"),
            ("/v1/completions", {"prompt": "hi"}, "openai", "generate"),
        ]
        for path, body, shape, what in refusals:
            r = httpx.post(url + path, json={"model": "minilm", **body}, timeout=60)
            assert r.status_code == 400, (path, r.text)
            message = r.json()["error"] if shape == "error" else r.json()["error"]["message"]
            assert message == f'"minilm" does not support {what}', path
        printed = json.loads(hangar("run", "minilm", texts[0]).stdout)
        assert isinstance(printed, list) and len(printed) == 64
        assert cosine(np.array(printed), expected[0]) >= 0.9999
        out = hangar("create", "minilm:q8", "-f", str(tmp_path / "Modelfile"), "-q", "q8_0").stdout
        assert "quantizing F32 model to Q8_0" in out
        r = httpx.post(url + "/api/embed", json={"model": "minilm:q8", "input": texts[0]}, timeout=120)
        assert cosine(np.array(r.json()["embeddings"][0]), expected[0]) >= 0.998
    finally:
        runtime.stop()


def test_hangar_create_carries_the_dense_modules(tmp_path: Path) -> None:
    """`hangar create` without a daemon from an EmbeddingGemma folder: its three files named
    model.safetensors (the encoder's, 2_Dense's, 3_Dense's) each reach the conversion in their own
    folder, and the stored model gives the reference's vectors."""

    from client.config import load
    from client.model_info import inspect
    from client.store import Store
    from formats.names import ModelName

    model, dense = build_embeddinggemma(tmp_path / "ckpt")
    (tmp_path / "Modelfile").write_text("FROM ./ckpt\n")
    env = {**os.environ, "HANGAR_HOME": str(tmp_path / "home"), "HANGAR_HOST": "127.0.0.1:9"}
    env.pop("HANGAR_MODELS", None)
    cmd = [sys.executable, "-m", "cli.main", "create", "embeddinggemma", "-f", str(tmp_path / "Modelfile")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    store = Store(load({"HANGAR_HOME": str(tmp_path / "home")}).models)
    info = inspect(store, store.get(ModelName.parse("embeddinggemma")))
    assert info.capabilities == ["embedding"] and info.architecture == "gemma-embedding"
    assert info.model_path is not None
    for text, ours in zip(TEXTS[:3], llama_cpp_vectors(info.model_path, TEXTS[:3]), strict=True):
        assert cosine(ours, reference(model, hf_ids(tmp_path / "ckpt", text), "mean", dense)) >= 0.9999
