"""Built-in methods: importing each module here is what registers it."""

from tta.methods.norm import Norm
from tta.methods.source import Source
from tta.methods.tent import Tent

__all__ = ["Norm", "Source", "Tent"]
