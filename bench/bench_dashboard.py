"""Dashboard latency: a slider change (re-sample 1,000 personas, redraw preview and marginal chart) and
page opens once the app is warm.

Run: ``.venv/bin/python bench/bench_dashboard.py [--repeats N]``

Three measurements, all printed:

1. *Slider change, core path*: what the Distributions page does after a slider moves, outside Streamlit:
   ``ui.renormalise`` + the spec copy, ``sample_personas(spec, 1000)``, ``marginal_summary``, the plotly
   figure and its JSON serialisation (what Streamlit sends to the browser), and the 10-row preview table.
   Each repeat uses a new slider value, so nothing is served from a cache.
2. *Slider change, whole page*: the Distributions page re-run by ``streamlit.testing.v1.AppTest`` after
   ``slider.set_value`` (script run + callback + every element; AppTest's own overhead included, so this is
   an upper bound of the server-side time).
2b. *Edit of the long category (occupation, 39 items)*: the Distributions page showing occupation (its
   searchable table, the conditional-row picker and the every-bar chart), re-run after one probability of
   the edited table row changed. AppTest cannot type into a data editor, so each repeat does what the
   editor's callback does (``ui.renormalise`` + ``ui.with_target_probs``, timed inside) and puts the new
   spec in session state before the re-run; a new value each repeat, so sampling is never a cache hit.
3. *Page open, warm*: each of the 8 pages opened with AppTest after a first visit warmed the caches, with one
   finished run (10 texts generated against the local fake OpenAI server) and its evaluation in the store.
   The Evaluate page is timed showing that evaluation (cached).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Every page script, in navigation order (the numeric prefix), as app.py lists them.
PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "app_pages").glob("[0-9]_*.py"))


def _ms(values: list[float]) -> str:
    qs = sorted(values)
    p90 = qs[min(len(qs) - 1, int(round(0.9 * (len(qs) - 1))))]
    med, top = statistics.median(qs) * 1000, qs[-1] * 1000
    return f"median {med:7.1f} ms   p90 {p90 * 1000:7.1f} ms   max {top:7.1f} ms"


def bench_core(repeats: int) -> None:
    import ui
    from personagen_core.personas.sampling import marginal_summary, sample_personas
    from personagen_core.personas.spec import load_pack

    spec = load_pack("japan")
    qualified = "attributes.age"
    totals, parts = (
        [],
        {"renormalise+copy": [], "sample 1000": [], "marginals": [], "figure+json": [], "preview table": []},
    )
    for i in range(repeats):
        t0 = time.perf_counter()
        probs = ui.renormalise(spec.attributes["age"].probs, 0, 0.05 + 0.9 * i / max(repeats, 1))
        new = ui.with_probs(spec, qualified, probs)
        t1 = time.perf_counter()
        df = sample_personas(new, 1000, random_state=0)
        t2 = time.perf_counter()
        summary = marginal_summary(new, df)
        t3 = time.perf_counter()
        ui.marginal_figure(summary, qualified, "age").to_json()
        t4 = time.perf_counter()
        df.head(10).to_dict("records")
        t5 = time.perf_counter()
        for k, (a, b) in zip(parts, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)), strict=True):
            parts[k].append(b - a)
        totals.append(t5 - t0)
    print(f"[1] slider change, core path ({repeats} repeats, japan pack, 1,000 personas)")
    for k, v in parts.items():
        print(f"    {k:<18} {_ms(v)}")
    print(f"    {'TOTAL':<18} {_ms(totals)}")


def _app(home: Path):
    from streamlit.testing.v1 import AppTest

    os.environ["PERSONAGEN_HOME"] = str(home)
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)


def bench_slider_page(repeats: int, home: Path) -> None:
    at = _app(home).run()
    at.switch_page("app_pages/1_distributions.py").run()
    key = next(s.key for s in at.slider if s.key.endswith("attributes.age:0"))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        at.slider(key=key).set_value(round(0.05 + 0.9 * i / max(repeats, 1), 3)).run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, [e.value for e in at.exception]
    print(f"[2] slider change, whole Distributions page via AppTest ({repeats} repeats)")
    print(f"    {'page rerun':<18} {_ms(times)}")


def bench_long_category(repeats: int, home: Path) -> None:
    import ui

    at = _app(home).run()
    at.switch_page("app_pages/1_distributions.py").run()
    at.selectbox(key="keep_dist_category").set_value("attributes.occupation").run()
    target = at.selectbox(key="keep_cond_row:attributes.occupation").value  # the first age band's row
    n_items = len(at.session_state["spec"].attributes["occupation"].items)
    assert [d for d in at.dataframe if list(d.value.columns) == ["item", "p", "lock"]], "no item table"
    times, callback = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        spec = at.session_state["spec"]
        probs = ui.renormalise(ui.target_probs(spec, target), 1, 0.01 + 0.4 * i / max(repeats, 1))
        at.session_state["spec"] = ui.with_target_probs(spec, target, probs)
        t1 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
        callback.append(t1 - t0)
        assert not at.exception, [e.value for e in at.exception]
    print(f"[2b] edit of the {n_items}-item category (occupation, row {target.split('@')[1]}), whole page "
          f"via AppTest ({repeats} repeats)")
    print(f"    {'callback work':<18} {_ms(callback)}")
    print(f"    {'page rerun':<18} {_ms(times)}")


def _finished_run(home: Path) -> None:
    """Generate 10 texts against the fake OpenAI server into ``home``'s run store (not timed)."""
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as srv:
        llm = LLMSettings(backend="openai", base_url=srv.base_url, api_key="sk-bench", model="gpt-4.1-mini")
        config = GenerationConfig(emotions=["joy", "anger"], per_emotion=5, llm=llm)
        run_generation(load_pack("japan"), config, RunStore(home / "runs.sqlite"))


def bench_pages(repeats: int, home: Path) -> None:
    _finished_run(home)
    at = _app(home).run()
    # Warm-up: open every page once and evaluate the run once (embedding model loaded, results cached).
    for page in PAGES:
        at.switch_page(page).run()
    at.switch_page("app_pages/6_evaluate.py").run()
    next(b for b in at.button if b.label == "Evaluate").click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    print(f"[3] page open, warm ({repeats} opens per page; one run of 10 texts, its evaluation cached)")
    for page in PAGES:
        times = []
        for _ in range(repeats):
            at.switch_page(
                "app_pages/1_distributions.py" if page != "app_pages/1_distributions.py" else "app_pages/2_scenarios.py"
            ).run()
            t0 = time.perf_counter()
            at.switch_page(page).run()
            times.append(time.perf_counter() - t0)
            assert not at.exception, (page, [e.value for e in at.exception])
        if page == "app_pages/6_evaluate.py":  # timed while drawing the cached evaluation, not an empty page
            assert at.get("plotly_chart") and at.session_state["last_report"], "evaluation not shown"
        print(f"    {Path(page).stem:<18} {_ms(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared machine: timings are noisy)")
    bench_core(args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        bench_slider_page(max(5, args.repeats // 2), Path(tmp) / "slider")
        bench_long_category(max(5, args.repeats // 2), Path(tmp) / "long")
        bench_pages(max(3, args.repeats // 4), Path(tmp) / "pages")


if __name__ == "__main__":
    main()
