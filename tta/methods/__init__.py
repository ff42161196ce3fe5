"""Built-in methods: importing each module here is what registers it."""

from tta.methods.cotta import CoTTA
from tta.methods.dda import DDA
from tta.methods.lame import LAME
from tta.methods.norm import Norm
from tta.methods.pseudo_label import PseudoLabel
from tta.methods.source import Source
from tta.methods.tent import Tent

__all__ = ["CoTTA", "DDA", "LAME", "Norm", "PseudoLabel", "Source", "Tent"]
