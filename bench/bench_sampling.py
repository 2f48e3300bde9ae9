"""Benchmark: sample 100,000 personas with scenarios (stages 1-3) from the shipped packs.

Run: .venv/bin/python bench/bench_sampling.py [--n 100000] [--repeat 7]
Prints, per pack, the best and median wall time of compile + sample (what ``sample_personas`` does), the
time of the re-weighting fit, and of rendering descriptions for 10,000 rows. The target is < 1 s for
100,000 personas with scenarios on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from personagen_core.personas.render import describe_row
from personagen_core.personas.sampling import build_model, sample_personas
from personagen_core.personas.spec import list_packs, load_pack


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _bench_pack(pack: str, n: int, repeat: int) -> None:
    spec = load_pack(pack)
    sample_personas(spec, 1000, random_state=0)  # warm-up (imports, caches)
    plain = _timed(lambda: sample_personas(spec, n, random_state=1), repeat)
    model = build_model(spec)
    draw = _timed(lambda: model.sample(n, random_state=1), repeat)
    fit = _timed(lambda: build_model(spec, reweight=True), max(1, repeat // 2))
    fitted = build_model(spec, reweight=True)
    rw = _timed(lambda: fitted.sample(n, random_state=1), repeat)
    rows = model.sample(10_000, random_state=2).to_dict("records")
    render = _timed(lambda: [describe_row(r, spec) for r in rows], 3)
    print(
        f"{pack:14s} {len(spec.categories())} categories | "
        f"sample_personas (compile+draw) best {min(plain):.3f} s, "
        f"median {statistics.median(plain):.3f} s | draw only best {min(draw):.3f} s | "
        f"reweight fit {min(fit):.3f} s ({fitted.ipf_iterations} IPF rounds, gap {fitted.ipf_max_gap:.1e}) + "
        f"draw {min(rw):.3f} s | render 10,000 descriptions {min(render):.3f} s"
    )
    verdict = "under" if min(plain) < 1.0 else "OVER"
    print(
        f"{'':14s} -> {n:,} personas with scenarios in {min(plain):.3f} s (best of {repeat}): {verdict} 1 s"
    )


def main() -> None:
    """Run the benchmark and print the measured figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, n={args.n:,}, repeat={args.repeat}")
    for pack in list_packs():
        _bench_pack(pack, args.n, args.repeat)


if __name__ == "__main__":
    main()
