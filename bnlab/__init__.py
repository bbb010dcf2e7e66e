"""bnlab: the batch-normalization study as a service. `from bnlab import Client` for its Python
client (bnlab/client.py)."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnlab.client import Client


def __getattr__(name: str) -> Any:
    # Lazily: the worker and the engine import bnlab too, and need no HTTP client.
    if name == "Client":
        from bnlab.client import Client

        return Client
    raise AttributeError(f"module 'bnlab' has no attribute {name!r}")


__all__ = ["Client"]
