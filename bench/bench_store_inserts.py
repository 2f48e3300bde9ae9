"""Accepted-text inserts as a run grows: CPU per quota-guarded insert at each tenth of ``--texts``.

Writes ``--texts`` texts (default 100,000) over ``--emotions`` emotions (default 7, like the japan pack) into
one run of a fresh store the way the pipeline does: ``RunStore.add_text(defer=True)`` inside
``write_behind()``, flushed every ``--flush`` texts (default 40: ten flushes a second at ~400 texts/s). The
guards run inside each flush's transaction. Prints the process CPU per insert (flush included) for each
tenth of the run; a guard that counts an emotion's texts grows with the run, a counter stays flat.

Run from the worktree whose store you measure:
``PYTHONPATH=$PWD .venv/bin/python bench/bench_store_inserts.py --texts 100000``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Parse the options, insert, print CPU per insert per tenth of the run and the machine load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--emotions", type=int, default=7)
    parser.add_argument("--flush", type=int, default=40, help="texts per flush (transaction)")
    args = parser.parse_args()

    import personagen_core
    from personagen_core.store import RunStore

    emotions = [f"emotion{i}" for i in range(args.emotions)]
    quota = -(-args.texts // args.emotions)
    load_before = os.getloadavg()
    print(f"bench_store_inserts: {args.texts:,} texts, {args.emotions} emotions (quota {quota:,} each), "
          f"flush every {args.flush}; code {Path(personagen_core.__file__).parent}")
    print(f"load average before {', '.join(f'{x:.2f}' for x in load_before)}")
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "inserts.sqlite")
        run_id = store.create_run(method="personagen", config={}, target=dict.fromkeys(emotions, quota),
                                  spec_yaml=None, spec_hash=None, spec_name=None)
        tenth = args.texts // 10
        cpu0 = time.process_time()
        with store.write_behind():
            for i in range(args.texts):
                text = f"text number {i} of the insert bench"
                store.add_text(run_id, emotion=emotions[i % len(emotions)], text=text, text_norm=text,
                               persona_id=None, model="m", quota=quota, defer=True)
                if (i + 1) % args.flush == 0:
                    store.flush()
                if (i + 1) % tenth == 0:
                    store.flush()
                    cpu = time.process_time()
                    print(f"  texts {i + 1 - tenth:>7,}-{i + 1:>7,}: {(cpu - cpu0) / tenth * 1e6:7.1f} us CPU per insert")
                    cpu0 = cpu
        assert sum(store.accepted_counts(run_id).values()) == args.texts
        store.close()
    print(f"load average after {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
