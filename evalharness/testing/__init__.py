"""Test doubles that speak the real wire protocols (DESIGN: fakes are real parts, over real HTTP)."""

from evalharness.testing.fake_openai import Fault, FakeOpenAI, FakeOpenAIProcess, Reply

__all__ = ["FakeOpenAI", "FakeOpenAIProcess", "Fault", "Reply"]
