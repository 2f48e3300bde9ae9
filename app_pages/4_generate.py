"""Generate: choose the backend and settings, see the cost estimate, launch and follow a run."""

from __future__ import annotations

import streamlit as st

import ui
from personagen_core.generation import pipeline, throughput, validation_policy
from personagen_core.generation.vocabulary import DEFAULT_CONCURRENCY, STAGE_CHOICES

STAGE_LABELS = {"1": "stage 1", "12": "stages 1 and 2", "123": "stages 1, 2 and 3 (the paper's)"}
assert set(STAGE_LABELS) == set(STAGE_CHOICES)

ui.page_title("Generate")

spec = ui.current_spec()
left, right = st.columns([2, 3], gap="large")

with left:
    st.subheader("Backend")
    llm = None  # stays None when the settings form fails (the error is shown)
    with ui.error_boundary("LLM settings"):
        llm = ui.llm_settings_form()
    st.subheader("Run")
    method = st.selectbox(
        "Method", list(pipeline.METHODS), format_func=lambda m: pipeline.METHODS[m].label,
        **ui.keep("method", "personagen", options=pipeline.METHODS),
    )
    c1, c2 = st.columns(2)
    # The embedded model writes a few texts a minute on a laptop-class CPU: its default run is small.
    embedded = getattr(llm, "backend", None) == "local"
    per_emotion = c1.number_input(
        "Texts per emotion", 1, 1_000_000,
        **ui.keep("per_emotion_embedded", 2) if embedded else ui.keep("per_emotion", 10),
    )
    seed = c2.number_input("Seed", 0, 2**31 - 1, **ui.keep("gen_seed", 0))
    temperature = c1.slider(
        "Temperature", 0.0, 2.0, step=0.05, **ui.keep("temperature", float(spec.generation.temperature))
    )
    c2.number_input("Concurrency", 1, 256, **ui.keep("concurrency", DEFAULT_CONCURRENCY))
    max_cost = c1.number_input("Max cost (USD, 0 = none)", 0.0, 10_000.0, step=1.0, **ui.keep("max_cost", 0.0))
    token_budget = c2.number_input("Token budget (0 = none)", 0, 10**12, step=10_000,
                                   help="Stop (resumable) once the run has used this many tokens in all.",
                                   **ui.keep("token_budget", 0))
    # Emotions no longer in the spec's label set are dropped from the kept choice.
    emotions = c2.multiselect(
        "Emotions", spec.emotion_names, **ui.keep("emotions", spec.emotion_names, options=spec.emotion_names)
    )

    defaults = {k: f.default for k, f in pipeline.GenerationConfig.model_fields.items()}
    with st.expander("Run options (optional)"):
        o1, o2 = st.columns(2)
        stages = o1.selectbox(
            "Conditioning stages", list(STAGE_CHOICES), format_func=STAGE_LABELS.get,
            help="Ablation: condition the texts on stage 1 only, stages 1-2, or all three.",
            **ui.keep("stages", defaults["stages"], options=STAGE_CHOICES),
        )
        validation_batch = o2.number_input("Candidates per validation call", 1, 64,
                                           **ui.keep("validation_batch", defaults["validation_batch"]))
        texts_per_persona = o1.number_input(
            "Texts per persona (0 = the spec's)", 0, 100, **ui.keep("texts_per_persona", 0))
        max_attempts = o2.number_input(
            "Attempt limit (0 = ten per text + 50)", 0, 10**9, step=100,
            help="Accepted + rejected candidates and outputs after which the run stops (resumable).",
            **ui.keep("max_attempts", 0))
        near_dup = o1.slider(
            "Near-duplicate threshold", 0.05, 1.0, step=0.05,
            help="Similarity to an accepted text at which an output is rejected as a near-duplicate.",
            **ui.keep("near_duplicate_threshold", defaults["near_duplicate_threshold"]))

    if embedded:
        st.caption("Embedded model: a small run by default (2 per emotion). For a bigger one raise "
                   "*Texts per emotion* (the time estimate below follows) or use a remote endpoint.")

    ready = False
    with ui.error_boundary("settings"):
        llm = ui.llm_settings()
        validate = None  # the policy's default: rules only where the validator measured at chance
        if pipeline.METHODS[method].validate:
            policy = validation_policy.default_validation(llm)
            chosen = st.toggle(
                "LLM validation (stages 1-3)",
                help="The paper asks the LLM whether each persona and scene is plausible. Off: the spec's "
                "rules and conditional tables only.",
                **ui.keep(f"llm_validation_{policy.model}", policy.default),
            )
            validate = None if chosen == policy.default else chosen
            decision = validation_policy.decide(llm, validate)
            if decision.message:
                (st.warning if decision.validate else st.caption)(decision.message)
        config = pipeline.GenerationConfig(
            method=method,
            per_emotion=int(per_emotion),
            seed=int(seed),
            emotions=[e for e in spec.emotion_names if e in emotions] or None,
            max_cost=float(max_cost) or None,
            token_budget=int(token_budget) or None,
            temperature=float(temperature),
            verdict_reasons=ui.kept("verdict_reasons", "all"),
            stages=stages,
            validation_batch=int(validation_batch),
            texts_per_persona=int(texts_per_persona) or None,
            max_attempts=int(max_attempts) or None,
            near_duplicate_threshold=float(near_dup),
            validate=validate,
            llm=llm,
        )
        n_texts = int(per_emotion) * len(config.emotions or spec.emotion_names)
        timing = throughput.estimate_run_time(config, n_texts)
        if timing is not None:
            st.info(f"Time: {timing.message}.")
        elif llm.backend == "local":
            st.caption("Time: these settings were never timed on this machine; every run is timed for the "
                       "next estimate, or time a few texts now.")
            if st.button(f"Time {throughput.CALIBRATION_TEXTS} texts on this machine", icon=":material/timer:"):
                with st.spinner("Timing a short run (the model loads first) ..."):
                    throughput.calibrate(spec, config, http_client=ui.http_client_for(config.llm))
                st.rerun()
        else:
            st.caption("Time: not measured on this machine yet; each finished run is timed for the next estimate.")
        estimate = pipeline.estimate_cost(spec, config)
        tokens = estimate.prompt_tokens + estimate.completion_tokens
        if estimate.total_usd is not None:
            st.info(f"Estimated cost: **${estimate.total_usd:.4f}** (~{tokens:,.0f} tokens).")
        else:
            st.info(
                f"Estimated usage ~{tokens:,.0f} tokens; no price known for "
                f"{', '.join(estimate.unknown_models)} (embedded or custom models cost nothing here)."
            )
        ready = True
    # Batch API: the same method in waves of provider batches (half price, results within 24 h).
    batch_poll = None
    if getattr(llm, "backend", None) == "openai" and not getattr(llm, "endpoints", None):
        if st.toggle("Batch API", help="Send the run as batches (/v1/files + /v1/batches) in waves: half the "
                     "price, results within 24 h; a closed dashboard resumes the same batches.",
                     **ui.keep("batch_api", False)):
            batch_poll = float(st.number_input("Batch poll interval (s)", 1, 3600, **ui.keep("batch_poll", 30)))
            st.caption("Costs use batch prices (half the list price); the run view shows each batch.")
    if st.button("Launch", type="primary", icon=":material/rocket_launch:", disabled=not ready):
        with ui.error_boundary("launching"):
            run_id = ui.start_generation(spec, config, batch_poll_s=batch_poll)  # also selects the run
            st.toast(f"Run {run_id} started.")

with right:
    st.subheader("Runs")

    # Poll every second while a run of this server is active, else every 5 s (runs started elsewhere).
    @st.fragment(run_every=1 if ui.any_run_active() else 5)
    def monitor() -> None:
        """Polls the run store, so a reload or another tab sees the same progress."""
        with ui.error_boundary("reading the run store"):
            run_id = ui.run_picker("Run", key="gen_run")
            ui.show_run_progress(run_id)
            ui.run_details(run_id)

    monitor()
