"""Domain adaptation with labeled source and unlabeled target data: gradient reversal and DANN."""

from tta.da.dann import DANN, DANNLosses, DomainHead, dann_step
from tta.da.fit import EpochRecord, FitConfig, FitProgress, fit_dann, trainable_parameters
from tta.da.grl import GradientReversal, anneal_lr, dann_schedule, grad_reverse

__all__ = [
    "DANN",
    "DANNLosses",
    "DomainHead",
    "EpochRecord",
    "FitConfig",
    "FitProgress",
    "GradientReversal",
    "anneal_lr",
    "dann_schedule",
    "dann_step",
    "fit_dann",
    "grad_reverse",
    "trainable_parameters",
]
