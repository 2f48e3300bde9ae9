"""Test doubles shipped with the product: an OpenAI-compatible loopback server with fault injection
(:mod:`.fake_openai`), used by the tests, the benches and offline demos."""

from __future__ import annotations

from personagen_core.testing.fake_openai import *  # noqa: F403
from personagen_core.testing.fake_openai import __all__ as _fake_all

__all__ = [*_fake_all]
