"""Tests of personagen_core.evaluation.embeddings: cache behaviour (fake model) and the real offline model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personagen_core.errors import DataError
from personagen_core.evaluation.embeddings import Embedder, ResultCache
from personagen_core.paths import home as personagen_home


class _FakeModel:
    """Deterministic stand-in for a SentenceTransformer: records what it was asked to encode."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.array([[len(t), t.count("a") + 1, sum(map(ord, t)) % 17 + 1] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _embedder(tmp_path: Path, fake: _FakeModel, monkeypatch: pytest.MonkeyPatch) -> Embedder:
    emb = Embedder(cache_dir=tmp_path)
    monkeypatch.setattr(emb, "_load_model", lambda: fake)
    return emb


def test_cache_embeds_only_new_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeModel()
    emb = _embedder(tmp_path, fake, monkeypatch)
    first = emb.encode(["alpha", "beta", "alpha", "gamma"])
    assert first.shape == (4, 3) and first.dtype == np.float32
    assert np.array_equal(first[0], first[2])
    assert fake.calls == [["alpha", "beta", "gamma"]]  # duplicates embedded once
    assert emb.stats.to_dict() == {"hits": 0, "misses": 4}

    # a fresh embedder on the same cache: old texts are hits, only "delta" reaches the model
    fake2 = _FakeModel()
    emb2 = _embedder(tmp_path, fake2, monkeypatch)
    second = emb2.encode(["gamma", "delta", "alpha"])
    assert fake2.calls == [["delta"]]
    assert emb2.stats.to_dict() == {"hits": 2, "misses": 1}
    assert np.array_equal(second[0], first[3]) and np.array_equal(second[2], first[0])

    fake3 = _FakeModel()
    emb3 = _embedder(tmp_path, fake3, monkeypatch)
    emb3.encode(["delta", "beta"])
    assert fake3.calls == []  # everything warm: the model is never loaded
    emb3.close()


def test_cache_is_keyed_by_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeModel()
    emb = _embedder(tmp_path, fake, monkeypatch)
    emb.encode(["same text"])
    other = Embedder("some-other-model", cache_dir=tmp_path)
    fake2 = _FakeModel()
    monkeypatch.setattr(other, "_load_model", lambda: fake2)
    other.encode(["same text"])
    assert other.model_id != emb.model_id and fake2.calls == [["same text"]]


def test_model_directory_identity_follows_content(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"a": 1}')
    a = Embedder(d, cache_dir=tmp_path).model_id
    (d / "config.json").write_text('{"a": 2}')
    assert Embedder(d, cache_dir=tmp_path).model_id != a


def test_bad_input(tmp_path: Path) -> None:
    emb = Embedder(cache_dir=tmp_path)
    with pytest.raises(DataError, match="text #1"):
        emb.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(DataError, match="no texts"):
        emb.encode([])


def test_default_home_and_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path / "home"))
    assert personagen_home() == tmp_path / "home"
    assert Embedder().cache_dir == tmp_path / "home" / "embeddings"
    assert ResultCache().cache_dir == tmp_path / "home" / "results"


def test_one_embedder_serves_many_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard shares one embedder between sessions: its SQLite cache is used from many threads
    (it used to fail with "SQLite objects created in a thread can only be used in that same thread")."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    fake = _FakeModel()
    emb = _embedder(tmp_path, fake, monkeypatch)
    emb.encode(["opened in the main thread"])  # the cache connection is created here
    barrier = threading.Barrier(6)

    def work(i: int) -> np.ndarray:
        barrier.wait()  # start together so the threads really overlap
        texts = [f"text {j}" for j in range(i * 5, i * 5 + 40)]  # overlapping ranges: hits and misses
        out = None
        for _ in range(3):
            out = emb.encode(texts)
        return out

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(work, range(6)))
    reference = Embedder(cache_dir=tmp_path / "fresh")
    monkeypatch.setattr(reference, "_load_model", lambda: _FakeModel())
    for i, got in enumerate(results):
        expected = reference.encode([f"text {j}" for j in range(i * 5, i * 5 + 40)])
        assert np.array_equal(got, expected)
    assert emb.stats.hits + emb.stats.misses == 1 + 6 * 3 * 40  # no update lost
    emb.close()
    assert emb.encode(["text 3"]).shape == (1, 3)  # reopens after close


def test_result_cache_from_many_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = ResultCache(tmp_path / "results")
    xs = [np.arange(float(i % 3), float(i % 3) + 5) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda x: cache.call(_square_sum, x), xs))
    assert got == [float((x**2).sum()) for x in xs]


_CALLS: list[int] = []


def _square_sum(x: np.ndarray, power: int = 2) -> float:
    _CALLS.append(1)
    return float((x**power).sum())


def test_result_cache_computes_once_per_arguments(tmp_path: Path) -> None:
    _CALLS.clear()
    cache = ResultCache(tmp_path / "results")
    x = np.arange(5.0)
    assert cache.call(_square_sum, x) == 30.0
    assert cache.call(_square_sum, x.copy()) == 30.0  # same content -> cached
    assert len(_CALLS) == 1
    assert cache.call(_square_sum, x, power=3) == 100.0
    assert cache.call(_square_sum, x + 1) == 55.0
    assert len(_CALLS) == 3
    off = ResultCache(tmp_path / "off", enabled=False)
    off.call(_square_sum, x)
    off.call(_square_sum, x)
    assert len(_CALLS) == 5
    cache.clear()
    cache.call(_square_sum, x)
    assert len(_CALLS) == 6


@pytest.mark.slow
def test_real_default_model_offline(tmp_path: Path) -> None:
    texts = ["I am so happy today!", "This makes me furious.", "I am so happy today!"]
    emb = Embedder(cache_dir=tmp_path)
    X = emb.encode(texts)
    assert X.shape == (3, 384) and X.dtype == np.float32
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(X[0], X[2])
    assert float(X[0] @ X[1]) < 0.9
    warm = Embedder(cache_dir=tmp_path)
    assert np.array_equal(warm.encode(texts), X)
    assert warm.stats.misses == 0 and warm._model is None


def test_precision_is_part_of_the_cache_key(tmp_path: Path) -> None:
    f32 = Embedder(cache_dir=tmp_path, precision="float32")
    bf16 = Embedder(cache_dir=tmp_path, precision="bfloat16")
    assert f32.dtype == "float32" and bf16.dtype == "bfloat16"
    assert f32.model_id != bf16.model_id and bf16.model_id.startswith(f32.model_id)
    assert Embedder(cache_dir=tmp_path).dtype in ("float32", "bfloat16")  # auto resolves to one of them
    with pytest.raises(DataError, match="embedding precision must be one of auto, float32, bfloat16"):
        Embedder(cache_dir=tmp_path, precision="int8")


@pytest.mark.slow
def test_bfloat16_vectors_match_float32(tmp_path: Path) -> None:
    texts = ["I am so happy today!", "This makes me furious.", "i feel a little lost and alone tonight"]
    X32 = Embedder(cache_dir=tmp_path, precision="float32").encode(texts)
    X16 = Embedder(cache_dir=tmp_path, precision="bfloat16").encode(texts)
    assert X16.dtype == np.float32
    assert np.allclose(np.linalg.norm(X16, axis=1), 1.0, atol=1e-5)
    assert (np.sum(X32 * X16, axis=1) > 0.999).all()
    assert not np.array_equal(X32, X16)  # really computed in bfloat16, not served from the float32 cache
