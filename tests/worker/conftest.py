"""The engine's data fixtures, for worker code that handles trainers without a database."""

from tests.models.conftest import one_torch_thread, splits

__all__ = ["one_torch_thread", "splits"]
