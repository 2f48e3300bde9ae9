"""Specs in and out of the dashboard: a spec file upload and the saved-specs panel (the library the CLI
reads with ``--spec NAME``)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import streamlit as st

from ui.state import _set_field_error, field_error, set_spec

__all__ = ["handle_spec_upload", "spec_library_panel"]


def handle_spec_upload(upload: Any, spec_mod: ModuleType) -> None:
    """Parse a newly uploaded spec file once; adopt it or show the error (with its field path) below."""
    if upload is None:
        st.session_state.pop("spec_upload_seen", None)
        _set_field_error("upload", None)
    elif st.session_state.get("spec_upload_seen") != upload.file_id:
        st.session_state["spec_upload_seen"] = upload.file_id
        try:
            text = upload.getvalue().decode("utf-8")
        except UnicodeDecodeError:
            _set_field_error("upload", f"{upload.name} is not a UTF-8 text file, so it cannot be a spec.")
        else:
            from personagen_core.errors import SpecError

            try:
                spec = spec_mod.parse_spec(text, source=upload.name)
            except SpecError as exc:
                _set_field_error("upload", f"{upload.name} is not a valid spec: {exc}")
            else:
                _set_field_error("upload", None)
                set_spec(spec, replace=True)
                st.success(f"Loaded spec {spec.name!r} from {upload.name}.")
    field_error("upload")


def _library_action(action: str) -> None:
    """Button callbacks of the saved-specs panel; errors are shown next to the panel."""
    from personagen_core.errors import PersonaGenError
    from ui.state import spec_library

    lib = spec_library()
    chosen = st.session_state.get("saved_spec_pick")
    try:
        if action == "save":
            name = str(st.session_state.get("saved_spec_name") or "").strip()
            lib.save(name, st.session_state["spec"])
            st.session_state["saved_spec_pick"] = name
            message = f"Saved the working spec as {name!r}."
        elif not chosen:
            raise PersonaGenError("choose a saved spec first")
        elif action == "load":
            set_spec(lib.load(chosen), replace=True)
            message = f"Loaded {chosen!r} as the working spec."
        elif action == "rename":
            new = str(st.session_state.get("saved_spec_new_name") or "").strip()
            lib.rename(chosen, new)
            st.session_state["saved_spec_pick"] = new
            message = f"Renamed {chosen!r} to {new!r}."
        elif action == "delete":
            lib.delete(chosen)
            st.session_state.pop("saved_spec_pick", None)
            message = f"Deleted {chosen!r}."
        else:
            raise ValueError(action)
    except PersonaGenError as exc:
        _set_field_error("library", str(exc))
        st.session_state.pop("library_message", None)
        return
    _set_field_error("library", None)
    st.session_state["library_message"] = message


def spec_library_panel() -> None:
    """Save the working spec under a name; load, rename or delete saved specs (``$PERSONAGEN_HOME``),
    which the CLI reads with ``--spec NAME``."""
    import datetime as dt

    from ui.state import spec_library

    saved = spec_library().list()
    c_name, c_save = st.columns([4, 1], vertical_alignment="bottom")
    c_name.text_input("Save the working spec as", key="saved_spec_name", placeholder="e.g. tuned ages v2")
    c_save.button("Save", key="saved_spec_save", on_click=_library_action, args=("save",),
                  icon=":material/save:")
    if saved:
        names = [r.name for r in saved]
        when = {r.name: dt.datetime.fromtimestamp(r.updated_at).strftime("%Y-%m-%d %H:%M") for r in saved}
        if st.session_state.get("saved_spec_pick") not in names:
            st.session_state["saved_spec_pick"] = names[0]
        st.selectbox("Saved specs", names, key="saved_spec_pick",
                     format_func=lambda n: f"{n} · saved {when[n]}")
        c_load, c_new, c_rename, c_delete = st.columns([1, 3, 1, 1], vertical_alignment="bottom")
        c_load.button("Load", key="saved_spec_load", on_click=_library_action, args=("load",),
                      icon=":material/upload_file:")
        c_new.text_input("New name", key="saved_spec_new_name", placeholder="rename to…")
        c_rename.button("Rename", key="saved_spec_rename", on_click=_library_action, args=("rename",))
        c_delete.button("Delete", key="saved_spec_delete", on_click=_library_action, args=("delete",),
                        icon=":material/delete:")
        st.caption("The CLI uses a saved spec by name: `personagen generate --spec NAME` (see `personagen spec list`).")
    else:
        st.caption("No saved spec yet. The working spec is auto-saved as a draft either way.")
    if st.session_state.get("library_message"):
        st.success(st.session_state.pop("library_message"))
    field_error("library")


