"""Near-duplicate screening as a run grows: CPU per text of ``NearDuplicateIndex.find`` + ``add``.

Draws ``--texts`` texts (default 20,000) from the fake server's responder (``DefaultResponder``, the
templated texts ``bench_scale.py`` runs on: a small vocabulary, so many texts share LSH buckets), over the
japan pack's 7 emotions, and screens each one the way the pipeline does: ``find`` (exact, then near
duplicate at Jaccard 0.8), ``add`` when it passes. Prints the CPU per text for each tenth of the run, the
rejections by reason and a digest of every verdict (text number, reason, similarity to 3 decimals), so two
versions of the index can be compared on the same texts: equal digests mean identical rejections.

Run from the worktree whose index you measure:
``PYTHONPATH=$PWD .venv/bin/python bench/bench_near_duplicates.py --texts 20000``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections import Counter
from pathlib import Path

EMOTIONS = ("joy", "sadness", "anger", "fear", "surprise", "disgust", "neutral")


def main() -> None:
    """Parse the options, screen the texts, print the figures and the machine load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0, help="the fake responder's seed")
    args = parser.parse_args()

    import personagen_core
    from personagen_core.generation.checks import NearDuplicateIndex, clean_output
    from personagen_core.testing.fake_openai import DefaultResponder

    responder = DefaultResponder(seed=args.seed)
    texts = [
        clean_output(str(responder({"messages": [{"role": "user", "content": f"Target emotion: {e}"}]})))
        for e in (EMOTIONS[i % len(EMOTIONS)] for i in range(args.texts))
    ]
    load_before = os.getloadavg()
    print(f"bench_near_duplicates: {args.texts:,} fake-server texts (seed {args.seed}); code "
          f"{Path(personagen_core.__file__).parent}")
    print(f"load average before {', '.join(f'{x:.2f}' for x in load_before)}")
    index = NearDuplicateIndex()
    reasons: Counter[str] = Counter()
    digest = hashlib.md5()
    tenth = max(1, args.texts // 10)
    total_cpu = 0.0
    cpu0 = time.process_time()
    for i, text in enumerate(texts):
        hit = index.find(text)
        if hit is None:
            index.add(text)
        else:
            reasons[hit[0]] += 1
            digest.update(f"{i}:{hit[0]}:{hit[2]:.3f};".encode())
        if (i + 1) % tenth == 0:
            cpu = time.process_time()
            total_cpu += cpu - cpu0
            print(f"  texts {i + 1 - tenth:>7,}-{i + 1:>7,}: {(cpu - cpu0) / tenth * 1e3:6.3f} ms CPU per text "
                  f"({len(index):,} indexed)")
            cpu0 = time.process_time()
    print(f"CPU per text (whole run) {total_cpu / (tenth * 10) * 1e3:.3f} ms; rejections {dict(reasons)}; "
          f"verdict digest {digest.hexdigest()[:12]}")
    if hasattr(index, "capped_lookups"):
        print(f"lookups with more than max_candidates={index.max_candidates} candidates (cut): "
              f"{index.capped_lookups:,} of {args.texts:,}")
    print(f"load average after {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
