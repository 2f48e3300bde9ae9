"""personagen_core is a pure library: importing any of its modules never imports streamlit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import personagen_core
    names = ["personagen_core"] + [
        m.name for m in pkgutil.walk_packages(personagen_core.__path__, "personagen_core.")
        if not m.name.endswith("__main__")
    ]
    for name in names:
        importlib.import_module(name)
        if "streamlit" in sys.modules:
            print(f"IMPORTS-STREAMLIT {name}")
            sys.exit(1)
    print(f"OK {len(names)}")
    """
)


@pytest.mark.slow
def test_no_module_of_personagen_core_imports_streamlit() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300, env=None
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    count = int(proc.stdout.split("OK ")[1])
    assert count >= 5  # spec, sampling, render, errors, cli ... were all imported


def test_every_public_name_of_the_package_resolves() -> None:
    import personagen_core

    missing = [name for name in personagen_core.__all__ if not hasattr(personagen_core, name)]
    assert missing == []
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        personagen_core.nope  # noqa: B018
