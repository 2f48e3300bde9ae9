"""Benchmark: re-opening a stored evaluation (issue 11's target: under 1 s), and what the pages do with it.

Workload: one evaluation of a run-sized dataset, 3,500 texts of 7 emotions with the persona and scenario
columns a real run has (sampled from the japan pack, persona descriptions as hover text), evaluated with
the default dashboard settings (t-SNE, diversity, separability; no gold data, no judge). The texts are
STAND-INS (CARER training texts when ../shared/data/carer exists, else generated sentences) and the
embedder is scikit-learn's HashingVectorizer (384 features, L2-normalised) instead of MiniLM, to keep the
set-up cheap: the stored report's size and structure do not depend on the embedding model (vectors are
not stored; coordinates, texts, attributes and the tables are). None of the quality figures means anything.

Measured, each repeated 5 times, median printed (seconds):
  save          EvaluationStore.save of the report (JSON + zlib into SQLite)
  open          EvaluationStore(path) + get(eval_id) in a fresh store object (what a reloaded page does)
  list          list() of the stored evaluations (the picker)
  figures       the Evaluate page's figures built from the reopened report (projection, confusion, diversity)
  html          render_html of the reopened report (the Report page's download, before Streamlit caches it)
  page_first    AppTest: the Evaluate page opened in a new session (imports, plotly, first draw)
  page_warm     AppTest: back to the Evaluate page from another page (what a page switch costs), median

Run: .venv/bin/python bench/bench_stored_evaluation.py [--texts 3500] [--repeats 5] [--carer DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CARER = REPO.parent / "shared" / "data" / "carer"
EMOTIONS = ["anger", "fear", "joy", "love", "neutral", "sadness", "surprise"]


class HashingEmbedder:
    """Cheap stand-in embedder: hashed word and bigram counts, 384 dimensions, L2-normalised rows."""

    model_id = "hashing-384 (bench stand-in)"

    def encode(self, texts: list[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.preprocessing import normalize

        vec = HashingVectorizer(n_features=384, alternate_sign=False, ngram_range=(1, 2))
        return normalize(vec.transform(texts)).toarray().astype(np.float32)


def _dataset(n: int, carer: Path, seed: int = 0) -> Any:
    from personagen_core.personas.render import describe_persona, describe_scenario
    from personagen_core.personas.sampling import sample_personas
    from personagen_core.personas.spec import load_pack

    rng = np.random.default_rng(seed)
    if (carer / "train.txt").exists():
        text = (carer / "train.txt").read_text(encoding="utf-8")
        lines = [ln.rsplit(";", 1)[0] for ln in text.splitlines() if ln.strip()]
        texts = [lines[i] for i in rng.choice(len(lines), n, replace=False)]
        source = "CARER train texts"
    else:
        words = ["the", "a", "day", "felt", "so", "very", "really", "about", "my", "our", "new", "old"]
        texts = [" ".join(rng.choice(words, 14)) + f" {i}." for i in range(n)]
        source = "generated sentences"
    spec = load_pack("japan")
    personas = sample_personas(spec, n, random_state=seed)
    frame = personas.copy()
    rows = personas.to_dict("records")
    frame["persona"] = [describe_persona(r, spec) for r in rows]
    frame["scenario"] = [describe_scenario(r, spec) for r in rows]
    frame["text"] = texts
    frame["label"] = [EMOTIONS[i % len(EMOTIONS)] for i in range(n)]
    frame.attrs["source"] = f"bench stand-ins ({source})"
    return frame, source


def _median(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _page_times(home: Path, eval_id: str, repeats: int) -> tuple[float, float]:
    """The Evaluate page through Streamlit's AppTest with ``home`` as PERSONAGEN_HOME (its store holds the
    evaluation and no run, so only the stored evaluation is drawn)."""
    import os

    from streamlit.testing.v1 import AppTest

    os.environ["PERSONAGEN_HOME"] = str(home)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    t = time.perf_counter()
    at.switch_page("app_pages/6_evaluate.py").run()
    first = time.perf_counter() - t
    assert not at.exception and at.selectbox(key="keep_eval_open").value == eval_id, "the page did not open it"
    warm = []
    for _ in range(repeats):
        at.switch_page("app_pages/5_explore.py").run()
        t = time.perf_counter()
        at.switch_page("app_pages/6_evaluate.py").run()
        warm.append(time.perf_counter() - t)
        assert at.get("plotly_chart"), "the reopened evaluation is drawn"
    return first, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=3500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--carer", type=Path, default=CARER, help="folder with CARER's train.txt (texts)")
    args = parser.parse_args()

    from personagen_core.evaluation import figures
    from personagen_core.evaluation.report import render_html
    from personagen_core.evaluation.stored import EvaluationStore
    from personagen_core.evaluation.suite import EvaluationSettings, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        frame, source = _dataset(args.texts, args.carer)
        t = time.perf_counter()
        report = evaluate(
            {"run": frame},
            settings=EvaluationSettings(projections=("tsne",)),
            embedder=HashingEmbedder(),
            cache_dir=Path(tmp) / "results",
        )
        setup_s = time.perf_counter() - t
        path = Path(tmp) / "evaluations.sqlite"
        store = EvaluationStore(path)
        for i in range(20):  # a store with some history: the picker lists them all
            store.save(report, runs=[f"older-{i}"], source="bench")
        save_s, eval_id = _median(lambda: store.save(report, runs=["run"], source="bench"), args.repeats)
        store.close()

        def reopen() -> dict[str, Any]:
            fresh = EvaluationStore(path)
            try:
                return fresh.get(eval_id)
            finally:
                fresh.close()

        open_s, reopened = _median(reopen, args.repeats)
        lister = EvaluationStore(path)
        list_s, listed = _median(lambda: lister.list(limit=200), args.repeats)

        def draw() -> None:
            figures.projection_figure_from_report(reopened, method="tsne")
            sep = reopened["separability"]["datasets"]
            figures.confusion_grid({n: d["confusion"] for n, d in sep.items()})
            figures.diversity_figure(reopened)

        figures_s, _ = _median(draw, args.repeats)
        html_s, page = _median(lambda: render_html(reopened), args.repeats)
        row = lister._conn.execute("SELECT length(report) FROM evaluations WHERE eval_id = ?", (eval_id,))
        blob = int(row.fetchone()[0])
        lister.close()
        page_first, page_warm = _page_times(Path(tmp), eval_id, args.repeats)
    out = {
        "workload": {
            "texts": args.texts,
            "text_source": source,
            "attribute_columns": len(reopened["projections"]["run"]["attributes"]),
            "stored_evaluations": len(listed),
            "report_json_bytes": len(json.dumps(report, default=str)),
            "stored_blob_bytes": blob,
            "html_bytes": len(page),
            "setup_evaluate_s": round(setup_s, 2),
        },
        "median_s": {
            "save": round(save_s, 4),
            "open": round(open_s, 4),
            "list": round(list_s, 4),
            "figures": round(figures_s, 4),
            "open_plus_figures": round(open_s + figures_s, 4),
            "html": round(html_s, 4),
            "page_first": round(page_first, 4),
            "page_warm": round(page_warm, 4),
        },
        "repeats": args.repeats,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
