"""The public surface is small, sorted and importable (httpx's test_exported_members)."""

from __future__ import annotations

import importlib

import pytest

import mqlogging

PACKAGES = ["mqlogging", "mqlogging.errors", "mqlogging.backends", "mqlogging.handlers"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_resolves(name: str) -> None:
    """Every name in __all__ exists, and __all__ is sorted."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for member in exported:
        assert hasattr(module, member), member


def test_error_tree() -> None:
    """Configuration errors are ValueErrors and missing extras are ImportErrors naming the extra."""
    assert issubclass(mqlogging.ConfigurationError, ValueError)
    assert issubclass(mqlogging.MissingDependencyError, ImportError)
    assert issubclass(mqlogging.PublishTimeout, mqlogging.BackendError)
    err = mqlogging.MissingDependencyError("pika", "amqp")
    assert str(err).endswith("pip install 'mqlogging[amqp]'")


def test_version_cli() -> None:
    """`mqlogging --version` prints the package version."""
    from mqlogging.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
