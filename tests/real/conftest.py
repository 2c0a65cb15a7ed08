import pytest


def pytest_collection_modifyitems(items):
    """Everything under tests/real uses installed real assets (`make assets` installs them)."""
    for item in items:
        if "tests/real" in str(item.fspath):
            item.add_marker(pytest.mark.real)
