"""Cost and accuracy of the output check's language identifier (``checks.LanguageIdentifier``, lingua).

Prints, in a fresh process: the time to import ``lingua``, to build the detector and load its n-gram models
on the first text, the time per text after that, the resident memory added (VmRSS from /proc), and how the
identifier judges texts of the fake server (English texts of its default responder, its German and
Spanish fault texts) and a few short English texts, with the spec language ``en``.

Run: ``.venv/bin/python bench/bench_language_id.py [--texts 2000]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=2000, help="texts timed after the first")
    args = ap.parse_args()
    from personagen_core.generation.checks import LanguageIdentifier
    from personagen_core.testing.fake_openai import DefaultResponder, FakeOpenAIServer

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    import lingua  # noqa: F401

    t_import = time.perf_counter() - t0
    ident = LanguageIdentifier("en")
    t0 = time.perf_counter()
    ident.off_language("Tonight, my landlord posted the schedule and I could not stop smiling.")
    t_first = time.perf_counter() - t0
    rss1 = _rss_mb()

    responder = DefaultResponder(seed=0)
    english = [
        responder({"messages": [{"role": "user", "content": f"Target emotion: {e}. Write it."}]})
        for e in ("joy", "anger", "sadness", "fear", "surprise", "pleasure", "neutral") * (args.texts // 7 + 1)
    ][: args.texts]
    t0 = time.perf_counter()
    flagged_en = sum(ident.off_language(t) is not None for t in english)
    per_text_ms = (time.perf_counter() - t0) / len(english) * 1000

    import httpx

    foreign: dict[str, list[str]] = {}
    for kind in ("german", "spanish"):
        with FakeOpenAIServer(faults=[kind] * 30) as srv:
            body = {"model": "m", "messages": [{"role": "user", "content": "Target emotion: joy. Write it."}]}
            foreign[kind] = [
                httpx.post(f"{srv.base_url}/chat/completions", json=body).json()["choices"][0]["message"]["content"]
                for _ in range(30)
            ]
    caught = {kind: sum(ident.off_language(t) is not None for t in texts) for kind, texts in foreign.items()}
    short = ["So tired of this.", "Wow, what a day.", "Ugh, the train is late again.", "I love sushi so much!"]
    print(f"import lingua: {t_import * 1000:.1f} ms; build + first text (loads the n-gram models): "
          f"{t_first * 1000:.0f} ms; then {per_text_ms:.3f} ms per text over {len(english)} texts")
    print(f"resident memory added: {rss1 - rss0:.0f} MB (VmRSS {rss0:.0f} -> {rss1:.0f} MB)")
    print(f"fake server English texts flagged off-language: {flagged_en} of {len(english)} "
          f"({len(set(english))} distinct)")
    for kind, n in caught.items():
        print(f"fake server {kind} texts flagged: {n} of {len(foreign[kind])}")
    for text in short:
        print(f"  {text!r}: {'off-language ' + str(ident.off_language(text)) if ident.off_language(text) else 'ok'}")


if __name__ == "__main__":
    main()
