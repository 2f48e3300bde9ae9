"""Saved specs and the working draft (personagen_core.spec_library), the spec/config diff (diff.py), and
the CLI reading a saved spec by name."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from personagen_core.diff import Change, diff_configs, diff_runs, diff_specs, flatten
from personagen_core.errors import PersonaGenError, SpecError
from personagen_core.personas.spec import dump_spec, load_pack, spec_hash
from personagen_core.spec_library import SpecLibrary, resolve_spec


@pytest.fixture()
def lib(tmp_path: Path) -> SpecLibrary:
    with SpecLibrary(tmp_path / "specs.sqlite") as library:
        yield library


def _tuned(spec, key: str = "age", p0: float = 0.5):
    new = spec.model_copy(deep=True)
    items = new.attributes[key].items
    rest = sum(it.p for it in items[1:])
    items[0].p = p0
    for it in items[1:]:
        it.p = it.p * (1 - p0) / rest
    return new


def test_save_list_load_rename_delete(lib: SpecLibrary) -> None:
    spec = _tuned(load_pack("japan"))
    saved = lib.save("young heavy", spec)
    assert saved.name == "young heavy" and saved.spec_hash == spec_hash(spec)
    assert [s.name for s in lib.list()] == ["young heavy"]
    loaded = lib.load("young heavy")
    assert dump_spec(loaded) == dump_spec(spec)  # exactly what was saved
    lib.save("second", load_pack("united_states"))
    assert lib.names() == ["second", "young heavy"]
    with pytest.raises(SpecError, match="already exists"):
        lib.save("second", spec, overwrite=False)
    with pytest.raises(SpecError, match="already exists"):
        lib.rename("young heavy", "second")
    lib.rename("young heavy", "tuned v2")
    assert lib.names() == ["second", "tuned v2"]
    assert lib.load("tuned v2").attributes["age"].items[0].p == pytest.approx(0.5)
    lib.delete("second")
    with pytest.raises(SpecError, match=r"no saved spec named 'second'.*saved specs: tuned v2"):
        lib.load("second")
    with pytest.raises(SpecError, match="no saved spec"):
        lib.delete("second")


@pytest.mark.parametrize("bad", ["", " ", "../etc/passwd", "a/b", "x.yaml", "-dash", "é" * 3])
def test_bad_names_are_refused_with_what_is_allowed(lib: SpecLibrary, bad: str) -> None:
    with pytest.raises(SpecError, match="not a valid saved-spec name"):
        lib.save(bad, load_pack("japan"))


def test_draft_round_trip_keeps_spec_and_form_and_refuses_secrets(tmp_path: Path) -> None:
    path = tmp_path / "specs.sqlite"
    spec = _tuned(load_pack("japan"), p0=0.42)
    with SpecLibrary(path) as lib:
        assert lib.load_draft() is None
        lib.save_draft(spec, {"per_emotion": 7, "emotions": ["joy"]})
        lib.save_draft(form={"per_emotion": 9})  # form only: the spec is kept
        with pytest.raises(PersonaGenError, match="api_key"):
            lib.save_draft(form={"api_key": "sk-secret", "per_emotion": 1})
        with pytest.raises(PersonaGenError, match="secret"):
            lib.save_draft(form={"hf_token": "hf_x"})
        lib.save_draft(form={"per_emotion": 9, "token_budget": 5000})  # a number of tokens, not a secret
        assert lib.load_draft().form["token_budget"] == 5000
        lib.save_draft(form={"per_emotion": 9})
    # A new process (a restarted server) reads the same draft back.
    with SpecLibrary(path) as again:
        draft = again.load_draft()
        assert draft is not None
        assert draft.form == {"per_emotion": 9}
        assert draft.spec is not None and draft.spec.attributes["age"].items[0].p == pytest.approx(0.42)
        again.save_draft(spec=load_pack("japan"))  # spec only: the form is kept
        assert again.load_draft().form == {"per_emotion": 9}
        again.clear_draft()
        assert again.load_draft() is None
    assert "sk-secret" not in path.read_bytes().decode("latin-1")


def test_one_library_shared_by_many_threads(lib: SpecLibrary) -> None:
    """Streamlit sessions share one library object: concurrent saves, loads and drafts all succeed."""
    base = load_pack("japan")
    specs = {i: _tuned(base, p0=0.1 + i * 0.05) for i in range(8)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for j in range(5):
                lib.save(f"spec {i}", specs[i])
                lib.save_draft(specs[i], {"thread": i, "round": j})
                assert lib.load(f"spec {i}").attributes["age"].items[0].p == pytest.approx(0.1 + i * 0.05)
                assert lib.load_draft() is not None
                lib.list()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert lib.names() == [f"spec {i}" for i in range(8)]
    draft = lib.load_draft()
    assert draft.form["round"] == 4 and draft.spec is not None  # the last write of some thread, whole


def test_draft_form_updates_merge_keys_from_many_threads_and_two_processes(tmp_path: Path) -> None:
    """Sessions save only what they changed: concurrent updates of different keys all survive, through one
    shared library (threads) and through a second connection to the same file (another process)."""
    path = tmp_path / "specs.sqlite"
    with SpecLibrary(path) as lib, SpecLibrary(path) as other:
        lib.save_draft(load_pack("japan"), {"model": "m", "seed": 0})
        barrier = threading.Barrier(8)

        def work(i: int) -> None:
            barrier.wait()  # start together so that the updates really overlap
            for j in range(10):
                (lib if i % 2 else other).update_draft_form({f"key_{i}": j, "seed": i})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))  # re-raises what a thread raised
        form = lib.load_draft().form
        assert {k: form[k] for k in form if k.startswith("key_")} == {f"key_{i}": 9 for i in range(8)}
        assert form["model"] == "m" and form["seed"] in range(8)
        assert lib.load_draft().spec is not None  # a form update keeps the spec
        with pytest.raises(PersonaGenError, match="api_key"):
            lib.update_draft_form({"api_key": "sk-secret"})
        with pytest.raises(PersonaGenError, match="JSON"):
            lib.update_draft_form({"x": object()})
        assert lib.load_draft().form == form  # a refused update changes nothing
    assert "sk-secret" not in path.read_bytes().decode("latin-1")


def test_draft_spec_updates_write_only_what_a_session_changed(tmp_path: Path) -> None:
    """Two sessions loaded the same spec; each tunes another category and saves: the draft keeps both. Without
    a base (or a stored spec that no longer validates) the session's spec is saved whole."""
    base = load_pack("japan")
    with SpecLibrary(tmp_path / "specs.sqlite") as lib:
        assert lib.update_draft_spec(base, _tuned(base, "age", 0.3)) == _tuned(base, "age", 0.3)  # none stored
        lib.update_draft_spec(base, _tuned(base, "gender", 0.6))  # the other tab, from the same base
        stored = lib.load_draft().spec
        assert stored.attributes["age"].items[0].p == pytest.approx(0.3)
        assert stored.attributes["gender"].items[0].p == pytest.approx(0.6)
        assert stored.attributes["occupation"] == base.attributes["occupation"]
        assert lib.update_draft_spec(None, base) == base  # no base: whole
        assert lib.load_draft().spec == base
        lib._run("UPDATE drafts SET spec_json = ?", ('{"version": 99, "attributes": "old layout"}',))
        assert lib.update_draft_spec(base, _tuned(base, "age", 0.2)) == _tuned(base, "age", 0.2)
        assert lib.load_draft().spec == _tuned(base, "age", 0.2)


def test_resolve_spec_reads_a_file_or_a_saved_name(tmp_path: Path, lib: SpecLibrary) -> None:
    spec = _tuned(load_pack("japan"), p0=0.3)
    lib.save("mine", spec)
    file = tmp_path / "mine.yaml"
    file.write_text(dump_spec(load_pack("united_states")))
    assert resolve_spec("mine", library=lib).attributes["age"].items[0].p == pytest.approx(0.3)
    assert resolve_spec(file, library=lib).name == load_pack("united_states").name
    with pytest.raises(SpecError, match=r"no spec file 'other'.*saved specs: mine"):
        resolve_spec("other", library=lib)


def test_cli_spec_save_list_and_generate_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from personagen_core.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path / "home"))
    file = tmp_path / "t.yaml"
    file.write_text(dump_spec(_tuned(load_pack("japan"), p0=0.25)))
    assert run("spec", "save", "tuned", "--spec", str(file))[0] == 0
    code, out, _ = run("spec", "list")
    assert code == 0 and out.startswith("tuned\t"), out
    code, out, _ = run("spec", "show", "--spec", "tuned", "--yaml")
    assert code == 0 and out == file.read_text()
    assert run("personas", "-n", "3", "--spec", "tuned")[0] == 0
    code, _, err = run("spec", "save", "tuned", "--pack", "japan")
    assert code == 2 and "already exists" in err
    code, _, err = run("spec", "show", "--spec", "nope")
    assert code == 2 and "no saved spec named 'nope'" in err and "saved specs: tuned" in err
    assert run("spec", "delete", "tuned")[0] == 0
    assert "no saved specs" in run("spec", "list")[1]


# --------------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------------


def test_flatten_keys_named_items_by_name() -> None:
    flat = flatten({"a": {"items": [{"name": "x", "p": 0.5}, {"name": "y", "p": 0.5}]}, "f": ["u", "v"]})
    assert flat == {"a.items[x].name": "x", "a.items[x].p": 0.5, "a.items[y].name": "y",
                    "a.items[y].p": 0.5, "f": ["u", "v"]}


def test_diff_specs_names_the_moved_probabilities_and_added_items() -> None:
    base = load_pack("japan")
    tuned = _tuned(base, p0=0.5)
    tuned.attributes["gender"].items.append(tuned.attributes["gender"].items[0].model_copy(update={"name": "x"}))
    tuned.scenario_filters["activity"] = [tuned.scenario["activity"].names[0]]
    changes = diff_specs(base, tuned)
    paths = {c.path: c for c in changes}
    first = base.attributes["age"].items[0]
    moved = paths[f"attributes.age.items[{first.name}].p"]
    assert moved.kind == "changed" and moved.before == pytest.approx(first.p) and moved.after == 0.5
    assert paths["attributes.gender.items[x].p"].kind == "added"
    assert paths["scenario_filters.activity"].after == [base.scenario["activity"].names[0]]
    # Only the age items (all rescaled), the new gender item and the filter changed.
    assert {c.path.split(".")[1] for c in changes if c.path.startswith("attributes")} == {"age", "gender"}
    assert diff_specs(base, dump_spec(base)) == []  # a YAML text compares equal to its spec


def test_diff_specs_matches_table_rows_by_condition() -> None:
    base = load_pack("japan")
    new = base.model_copy(deep=True)
    row = new.attributes["occupation"].table[2]
    row.items[0].p, row.items[1].p = row.items[1].p, row.items[0].p
    changes = diff_specs(base, new)
    assert changes and all(c.path.startswith("attributes.occupation.table[age=18-24].items[") for c in changes)


def test_diff_configs_and_runs() -> None:
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig

    a = GenerationConfig(per_emotion=5, llm=LLMSettings(backend="openai", model="m1", api_key="sk-x"))
    b = GenerationConfig(per_emotion=6, llm=LLMSettings(backend="openai", model="m2", api_key="sk-y"))
    changes = diff_configs(a, b)
    assert Change("per_emotion", "changed", 5, 6) in changes
    assert Change("llm.model", "changed", "m1", "m2") in changes
    assert not any("api_key" in c.path for c in changes)
    base = load_pack("japan")
    run_a = {"method": "personagen", "config": {"per_emotion": 5}, "target": {"joy": 5},
             "spec_yaml": dump_spec(base)}
    run_b = {"method": "attrprompt", "config": {"per_emotion": 5}, "target": {"joy": 5},
             "spec_yaml": dump_spec(_tuned(base))}
    d = diff_runs(run_a, run_b)
    assert d["config"] == [Change("method", "changed", "personagen", "attrprompt")]
    assert d["target"] == [] and d["spec"]
