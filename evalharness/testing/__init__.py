"""Test doubles that speak the real wire protocols (DESIGN: fakes are real parts, over real HTTP)."""

from evalharness.testing.fake_openai import FakeOpenAI, FakeOpenAIProcess, Fault, Reply

__all__ = ["FakeOpenAI", "FakeOpenAIProcess", "Fault", "Reply"]
