"""Evaluation protocols: in which order test domains arrive and when the adapter is reset.

A protocol turns per-domain loaders into one stream of :class:`StreamItem`. The adapter never
decides when to reset; the protocol marks the batches before which the runner calls
``adapter.reset()`` (keeping the protocol outside the method avoids the hidden-driver
reproduction problems seen in CoTTA's code).

This module names the protocols (:func:`get_protocol`, :func:`list_protocols`) and re-exports them:
the stream types are in :mod:`eval.protocols.streams`, the domain-order protocols in :mod:`eval.protocols.domain_order`
and the label-shift ones in :mod:`eval.protocols.label_shift`.
"""

from __future__ import annotations

from collections.abc import Callable

from eval.protocols.domain_order import Continual, Gradual, MixedDomains, MixedSamples, ResetEachDomain
from eval.protocols.label_shift import ClassSorted, ContinualDirichlet, DirichletLabelShift
from eval.protocols.streams import Protocol

__all__ = ["CONCENTRATION_PROTOCOLS", "get_protocol", "list_protocols"]

_PROTOCOLS: dict[str, Callable[[], Protocol]] = {
    ResetEachDomain.name: ResetEachDomain,
    Continual.name: Continual,
    ClassSorted.name: ClassSorted,
    DirichletLabelShift.name: DirichletLabelShift,
    ContinualDirichlet.name: ContinualDirichlet,
    Gradual.name: Gradual,
    MixedDomains.name: MixedDomains,
    MixedSamples.name: MixedSamples,
}
_SEEDED = (MixedDomains, MixedSamples, DirichletLabelShift, ContinualDirichlet)
CONCENTRATION_PROTOCOLS = (DirichletLabelShift.name, ContinualDirichlet.name)
"""The protocols that take a Dirichlet concentration (``get_protocol(..., concentration=...)``)."""


def list_protocols() -> list[str]:
    """Return the names accepted by :func:`get_protocol`, sorted."""
    return sorted(_PROTOCOLS)


def get_protocol(name: str, *, seed: int | None = None, concentration: float | None = None) -> Protocol:
    """Return a new protocol instance from its name.

    Args:
        name: One of :func:`list_protocols`, e.g. ``"episodic"`` or ``"continual"``.
        seed: Seeds the order of protocols that shuffle (``mixed``, ``mixed-samples``, ``dirichlet``,
            ``continual-dirichlet``); others ignore it.
        concentration: Dirichlet concentration of the protocols in :data:`CONCENTRATION_PROTOCOLS`; ``None``
            keeps their default (0.1).

    Raises:
        ValueError: If ``name`` is unknown (the message lists the valid names), or a concentration is given
            to a protocol that takes none, or is not a positive number.

    Example:
        >>> get_protocol("continual").name
        'continual'
    """
    if name not in _PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid names are: {', '.join(list_protocols())}")
    if concentration is not None and name not in CONCENTRATION_PROTOCOLS:
        raise ValueError(f"protocol {name!r} takes no Dirichlet concentration; only "
                         f"{', '.join(CONCENTRATION_PROTOCOLS)} do")
    factory = _PROTOCOLS[name]
    kwargs: dict[str, float] = {} if seed is None or factory not in _SEEDED else {"seed": seed}
    if concentration is not None:
        kwargs["concentration"] = concentration
    return factory(**kwargs)
