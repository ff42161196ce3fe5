"""Save and load the complete adaptation state of a method, atomically and checked, for this or a new process."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import torch
from torch import Tensor, nn

from tta.checks import Snapshot, Stateful, restore_snapshot, take_snapshot
from tta.files import atomic_torch_save, load_without_code, unreadable_reason

__all__ = ["Adaptable", "StateFile", "Where", "STATE_FORMAT", "RELATIVE_STATE_FORMAT", "check_fits", "check_intact", "check_method_settings", "check_optimizers", "check_record", "content_digest", "method_settings", "on_cpu", "optimizer_settings", "with_digest", "save_state", "load_state"]


class Adaptable(Stateful, Protocol):
    """What saving and loading use of a method (every :class:`tta.base.TTAMethod` has it).

    Its modules' state, its optimizers and its reset point (``None`` before ``snapshot()``).
    """

    optimizers: list[torch.optim.Optimizer]
    reset_point: Snapshot | None

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...

    def modules(self) -> Iterator[nn.Module]: ...


logger = logging.getLogger("tta.state")

Where = str | os.PathLike[str]
"""The file named in messages: a path, or how a file object is described (:func:`_describe`)."""
StateFile = str | os.PathLike[str] | BinaryIO
"""Where a state is saved or loaded: a path, or a binary file object (as ``torch.save`` / ``torch.load`` take)."""

STATE_FORMAT = 1
RELATIVE_STATE_FORMAT = 2  # a state saved relative to its source snapshot

# Keys every state file has, with their types; a relative state has its fingerprint and unchanged names too.
_KEYS: dict[str, type | tuple[type, ...]] = {
    "method": str, "optimizers": list, "module": dict, "snapshot": (tuple, list),
}
_RELATIVE_KEYS: dict[str, type | tuple[type, ...]] = {"source": str, "unchanged": list}
# Every key a state written before digests existed can have: any other key in a file without a digest is damage.
_UNDIGESTED_KEYS = {"format", "optimizer_settings", *_KEYS, *_RELATIVE_KEYS}
DIGEST_KEY = "digest"
# Plain attributes that the library switches while running (frozen(), statistics recomputation): not settings.
_RUN_TIME_FLAGS = frozenset({"training", "update_stats"})
_PLAIN = (bool, int, float, str, type(None))


def check_record(path: Where, record: object, method: str, num_optimizers: int) -> None:
    """Raise ``ValueError`` unless ``record`` is a complete state of ``method`` with ``num_optimizers`` optimizers."""
    if not isinstance(record, dict) or record.get("format") not in (STATE_FORMAT, RELATIVE_STATE_FORMAT):
        raise ValueError(f"{path} is not an adaptation state (format {STATE_FORMAT}) written by save_state")
    keys = _KEYS | (_RELATIVE_KEYS if record["format"] == RELATIVE_STATE_FORMAT else {})
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{path} is not a complete adaptation state: it lacks {', '.join(missing)}; "
                         "write states with save_state")
    wrong = [f"{key} is {type(record[key]).__name__}" for key, kind in keys.items()
             if not isinstance(record[key], kind)]
    if wrong or len(record["snapshot"]) != 2:
        raise ValueError(f"{path} is not a valid adaptation state ({'; '.join(wrong) or 'snapshot is not a pair'}); "
                         "write states with save_state")
    if record["method"] != method:
        raise ValueError(f"{path} holds the state of {record['method']}, not of {method}")
    if len(record["optimizers"]) != num_optimizers:
        raise ValueError(f"{path} has {len(record['optimizers'])} optimizer state(s); the method has {num_optimizers}")


def check_fits(path: Where, saved: object, expected: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``saved`` has exactly the keys of ``expected`` with tensors of the same shapes and dtypes."""
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a valid adaptation state: a state dict is {type(saved).__name__}")
    problems = [f"missing {key}" for key in expected if key not in saved]
    problems += [f"unexpected {key}" for key in saved if key not in expected]
    problems += [f"{key} is {_shape(value)} in the file, {_shape(expected[key])} in the model"
                 for key, value in saved.items() if key in expected and _shape(value) != _shape(expected[key])]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{path} does not fit this model: {'; '.join(problems[:3])}{more}; nothing was changed")


def _shape(value: object) -> str:
    """Describe a state entry by what must match for a bit-exact load: shape and dtype of a tensor."""
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Return what a state file records of ``optimizer``: its class, each group's hyperparameters (not ``params``)."""
    cls = type(optimizer)
    groups = [{key: on_cpu(value) for key, value in group.items() if key != "params"}
              for group in optimizer.param_groups]
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "param_groups": groups}


def on_cpu(value: Any) -> Any:
    """Return ``value`` with every tensor in it (nested in dicts, lists, tuples) detached, cloned onto the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def check_optimizers(path: Where, record: dict[str, Any], adapter: Adaptable) -> None:
    """Raise ``ValueError`` when the file's optimizers differ from ``adapter``'s in class or hyperparameters.

    Files written before the settings were recorded carry none and are not checked here.
    """
    recorded = record.get("optimizer_settings")
    if recorded is None:
        return
    method = type(adapter).__name__
    if (not isinstance(recorded, list) or len(recorded) != len(adapter.optimizers)
            or not all(isinstance(settings, dict) for settings in recorded)):
        raise ValueError(f"{path} is not a valid adaptation state: its optimizer settings do not match its optimizers")
    for saved, optimizer in zip(recorded, adapter.optimizers):
        current = optimizer_settings(optimizer)
        if saved.get("class") != current["class"]:
            raise ValueError(f"{path} holds the state of optimizer {_short(saved.get('class'))}; this {method} "
                             f"uses optimizer {_short(current['class'])}: build it with the same optimizer to load it")
        differences = _differences(saved.get("param_groups"), current["param_groups"])
        if differences:
            raise ValueError(f"{path} was saved with optimizer settings {differences[0]}, this {method} has "
                             f"{differences[1]}: build it with the same settings to load this state")


def _short(name: object) -> str:
    return str(name).rsplit(".", 1)[-1]


def _differences(saved: object, current: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Return the differing hyperparameters as ``(file side, adapter side)`` text, or ``None`` when equal.

    Only keys on both sides are compared: a flag that a newer torch adds to every group is not a difference.
    """
    if not isinstance(saved, list) or len(saved) != len(current) or not all(isinstance(g, dict) for g in saved):
        count = len(saved) if isinstance(saved, list) else 0
        return f"{count} parameter group(s)", f"{len(current)}"
    pairs = [(f"{key}={old[key]!r}", f"{key}={new[key]!r}")
             for old, new in zip(saved, current) for key in new if key in old and not _equal(old[key], new[key])]
    if not pairs:
        return None
    return ", ".join(p[0] for p in pairs), ", ".join(p[1] for p in pairs)


def _equal(a: object, b: object) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b.to(a.device))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def content_digest(value: Any, *, digest_size: int = 32, framed: bool = True) -> str:
    """Return the blake2b hex digest of ``value``: tensors by dtype, shape and bytes, containers item by item.

    ``framed`` also feeds each dict's length, so that no two different nestings feed the same bytes. The
    source fingerprint of relative states is unframed, as first written, so that older files still match it.
    """
    digest = hashlib.blake2b(digest_size=digest_size)
    _digest_into(digest, value, framed)
    return digest.hexdigest()


def _digest_into(digest: Any, value: Any, framed: bool) -> None:
    """Feed ``value`` (tensors, containers of them, plain values) into ``digest``, tensors by their bytes."""
    if isinstance(value, Tensor):
        digest.update(f"tensor:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        if framed:
            digest.update(f"dict[{len(value)}]".encode())
        for key, item in value.items():
            digest.update(f"{key!r}=".encode())
            _digest_into(digest, item, framed)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}[{len(value)}]".encode())
        for item in value:
            _digest_into(digest, item, framed)
    else:
        digest.update(f"{value!r};".encode())


def with_digest(record: dict[str, Any]) -> dict[str, Any]:
    """Return ``record`` with the digest of its content added, as :func:`check_intact` expects it."""
    return record | {DIGEST_KEY: content_digest(record)}


def check_intact(path: Where, record: object) -> None:
    """Raise ``ValueError`` unless ``record`` holds exactly what was written: its content matches its digest.

    A file written before digests existed has none; it is accepted (with a warning) only when it has a
    known format and no key that older states did not have, so that a damaged digest entry cannot pass
    a file off as an older one.
    """
    if not isinstance(record, dict):
        return  # not a state at all: check_record says so
    if DIGEST_KEY not in record:
        unknown = sorted(str(key) for key in record if key not in _UNDIGESTED_KEYS)
        if unknown or record.get("format") not in (STATE_FORMAT, RELATIVE_STATE_FORMAT):
            found = f"unknown entries {', '.join(unknown[:3])}" if unknown else "no known format"
            raise ValueError(f"{path} is damaged or not an adaptation state written by save_state (no digest, "
                             f"{found}); nothing was changed")
        logger.warning("%s has no integrity digest (written by an older version): it is loaded without a check "
                       "for damage; save it again to add one", path)
        return
    content = {key: value for key, value in record.items() if key != DIGEST_KEY}
    if record[DIGEST_KEY] != content_digest(content):
        raise ValueError(f"{path} is damaged: its content does not match the digest written with it; nothing "
                         "was changed (load an intact copy, or save the state again)")


def method_settings(adapter: Adaptable) -> dict[str, Any]:
    """Return the plain settings of ``adapter`` that a state file records, by attribute path.

    These are the public attributes holding numbers, strings, booleans, ``None`` or tuples of them, of
    the method itself and of the library's modules inside it (adaptive BatchNorm layers: ``stats``,
    ``momentum``, ``prior``; DDA's projector; ...). They are what the method's options became, however
    it was built. The user's own layers are left out: their shapes are checked with the tensors.
    """
    settings: dict[str, Any] = {}
    for name, module in adapter.named_modules():
        if name and type(module).__module__.partition(".")[0] not in ("tta", "adapters_bn"):
            continue
        for attribute, value in vars(module).items():
            if not attribute.startswith("_") and attribute not in _RUN_TIME_FLAGS and _is_plain(value):
                settings[f"{name}.{attribute}" if name else attribute] = value
    return settings


def _is_plain(value: object) -> bool:
    """Whether ``value`` is a number, string, boolean, ``None`` or a tuple of them (exact types: loadable as is)."""
    if type(value) is tuple:
        return all(_is_plain(item) for item in value)
    return type(value) in _PLAIN


def check_method_settings(path: Where, record: dict[str, Any], adapter: Adaptable) -> None:
    """Raise ``ValueError`` naming the settings in which the file's method differs from ``adapter``.

    Only settings on both sides are compared (a setting a newer version adds is not a difference);
    files written before settings were recorded carry none and are not checked here.
    """
    recorded = record.get("method_settings")
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} is not a valid adaptation state: its method settings are "
                         f"{type(recorded).__name__}, not a dict; write states with save_state")
    current = method_settings(adapter)
    differing = [key for key in current if key in recorded and not _equal(recorded[key], current[key])]
    if differing:
        more = f" (and {len(differing) - 3} more)" if len(differing) > 3 else ""
        saved = ", ".join(f"{key}={recorded[key]!r}" for key in differing[:3])
        here = ", ".join(f"{key}={current[key]!r}" for key in differing[:3])
        raise ValueError(f"{path} was saved with method settings {saved}{more}; this {type(adapter).__name__} has "
                         f"{here}: build it with the same options to load this state; nothing was changed")


def save_state(adapter: Adaptable, path: StateFile, *, relative_to_source: bool = False) -> Path | None:
    """Write parameters, buffers, optimizer states and the reset snapshot to ``path`` (write, then rename).

    An interrupted save to a path leaves the previous file intact. A binary file object (an open file,
    ``io.BytesIO``) is written at its position, as ``torch.save`` writes it: not atomically. Load the state
    with :func:`load_state` into the same method built on the same architecture, in this or another process.

    Args:
        adapter: The method whose state is written.
        path: The file to write, or a binary file object open for writing.

    Returns:
        The file written, or ``None`` for a file object.
        relative_to_source: Leave out the snapshot and every tensor still equal to it, and write a
            fingerprint of the snapshot instead: the file then loads only into the same method wrapped
            around the same source model (as a resumed benchmark stream is).
    """
    if adapter.reset_point is None:
        raise RuntimeError(f"{type(adapter).__name__} has no snapshot to save: call self.snapshot() in __init__")
    module = adapter.state_dict()
    record: dict[str, Any] = {
        "format": STATE_FORMAT,
        "method": type(adapter).__name__,
        "optimizers": [on_cpu(opt.state_dict()) for opt in adapter.optimizers],
        "optimizer_settings": [optimizer_settings(opt) for opt in adapter.optimizers],
        "method_settings": method_settings(adapter),
    }
    if relative_to_source:
        source, source_optimizers = adapter.reset_point
        unchanged = [k for k, v in module.items() if k in source and _same(v, source[k])]
        kept = set(unchanged)
        changed = {k: v for k, v in module.items() if k not in kept}
        record |= {"format": RELATIVE_STATE_FORMAT, "source": _fingerprint(adapter.reset_point),
                   "module": on_cpu(changed), "unchanged": unchanged, "snapshot": (None, on_cpu(source_optimizers))}
    else:
        record |= {"module": on_cpu(module), "snapshot": on_cpu(adapter.reset_point)}
    if isinstance(path, (str, os.PathLike)):
        return atomic_torch_save(with_digest(record), path)
    torch.save(with_digest(record), path)
    return None


def _describe(file: BinaryIO) -> str:
    """Name a file object in messages: its file name where it has one."""
    name = getattr(file, "name", None)
    return f"file object {name!r}" if isinstance(name, str) else f"file object {type(file).__name__}"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same values, bit for bit (so NaN never equals NaN, and is kept)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def _fingerprint(snapshot: Snapshot) -> str:
    """Return a digest of the snapshot: its tensors' names, dtypes, shapes and bytes, and its optimizer states."""
    return content_digest(snapshot, digest_size=20, framed=False)


def load_state(adapter: Adaptable, path: StateFile) -> Adaptable:
    """Restore a state written by :func:`save_state` into ``adapter``, bit for bit; returns ``adapter``.

    All or nothing: a file that is refused, or a load that fails half-way, leaves the adapter's
    parameters, buffers, optimizer states and reset snapshot exactly as they were. ``path`` may be a
    binary file object open for reading (read from its position); the same checks apply.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is damaged (its content does not match its digest, or it is truncated), is
            not an adaptation state, holds code or objects other than tensors and plain containers, or
            belongs to another method, architecture, method settings (``stats``, ``steps``, ...),
            optimizer class or optimizer settings (learning rate, betas, ...).
    """
    source: Path | BinaryIO
    where: Where
    if isinstance(path, (str, os.PathLike)):
        source = where = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"no adaptation state at {source}")
    else:
        source, where = path, _describe(path)
    record: Any  # checked below, key by key, before anything is used
    try:
        record = load_without_code(source)  # type: ignore[arg-type]  # torch.load reads file objects too
    except Exception as error:  # noqa: BLE001 - torch raises several types for foreign or damaged files
        raise ValueError(f"{where} is not a readable adaptation state: {unreadable_reason(error)}") from error
    check_intact(where, record)
    check_record(where, record, type(adapter).__name__, len(adapter.optimizers))
    module = record["module"]
    if record["format"] == RELATIVE_STATE_FORMAT:
        module = _with_source(adapter, where, record)
    check_fits(where, module, adapter.state_dict())
    if record["format"] == STATE_FORMAT:
        check_fits(where, record["snapshot"][0], adapter.state_dict())
    check_method_settings(where, record, adapter)  # after the shapes: another architecture is named as such
    check_optimizers(where, record, adapter)
    _load_all_or_nothing(adapter, where, module, record)
    return adapter


def _load_all_or_nothing(adapter: Adaptable, path: Where, module: dict[str, Any], record: dict[str, Any]) -> None:
    """Load the checked ``record`` into ``adapter``; on any failure put everything back and raise ``ValueError``."""
    before, reset_point = take_snapshot(adapter, adapter.optimizers), adapter.reset_point
    try:
        adapter.load_state_dict(module)
        for opt, opt_state in zip(adapter.optimizers, record["optimizers"]):
            opt.load_state_dict(opt_state)
        if record["format"] == STATE_FORMAT:
            device = next((t.device for t in adapter.state_dict().values()), torch.device("cpu"))
            state, optimizer_states = record["snapshot"]
            adapter.reset_point = ({k: v.to(device) for k, v in state.items()}, optimizer_states)
    except Exception as error:  # torch raises RuntimeError, KeyError, ValueError for states that do not fit
        restore_snapshot(adapter, adapter.optimizers, before)
        adapter.reset_point = reset_point
        raise ValueError(f"{path} does not fit this {type(adapter).__name__} ({type(error).__name__}: {error}); "
                         "nothing was changed") from error


def _with_source(adapter: Adaptable, path: Where, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Return the full module state of a relative ``record``: its tensors, and the rest from ``adapter``'s snapshot.

    Raises:
        ValueError: ``adapter``'s snapshot is not the one the state was saved relative to.
    """
    if adapter.reset_point is None or _fingerprint(adapter.reset_point) != record["source"]:
        raise ValueError(f"{path} was saved relative to another source model (or reset point) than this "
                         f"{type(adapter).__name__}'s; load it into an adapter wrapped around the same model")
    source = adapter.reset_point[0]
    return {**{k: source[k] for k in record["unchanged"]}, **record["module"]}
