"""The only forward-hook code: capture, override and add at canonical sites, handles always removed.

Mining, the ablation score and the output-centric score all go through these context managers (delphi's
lesson: one hook mechanism, so a unit kind defines *what* to read and write, never *how* to hook).

* :func:`capture` -- store the tensor at several points during one forward pass; with ``stop`` the pass
  ends (a private exception) as soon as the last of them has been captured: no later layer, no LM head.
* :func:`edit` -- replace the tensor at a point by ``fn(tensor)`` (a new tensor; inputs are never
  modified in place).  :func:`override` and :func:`add` are the two edits units need.

A *point* is ``(Site, layer)``.  Input sites read the module's first positional argument (or its
``hidden_states=`` keyword); output sites read the output, or its first element when it is a tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from bench.subject.architectures import Site, resolve

Point = tuple[Site, int]


class StopForward(Exception):
    """Raised by a capture hook to end the forward pass once every requested point was captured."""


def _read_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _register(model: Any, point: Point, fn: Callable[[Any], Any | None]) -> Any:
    """Hook ``fn(tensor) -> new tensor | None`` at ``point``; returns the handle."""
    site, layer = point
    module = resolve(model, site, layer)
    if site.io == "input":

        def pre_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            new = fn(_read_input(args, kwargs))
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(_module: Any, _args: tuple[Any, ...], output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        new = fn(first)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return module.register_forward_hook(hook)


@contextmanager
def hooked(model: Any, hooks: Sequence[tuple[Point, Callable[[Any], Any | None]]]) -> Iterator[None]:
    """Register every ``(point, fn)``; remove all handles on exit, whatever happened."""
    handles = []
    try:
        for point, fn in hooks:
            handles.append(_register(model, point, fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(model: Any, points: Sequence[Point], stop: bool = True) -> Iterator[dict[Point, Any]]:
    """Yield a dict filled with ``point -> tensor`` (detached) during the forward passes run inside.

    With ``stop``, the hook that completes the set raises :class:`StopForward`; run the model with
    :func:`forward` (which catches it) so the pass ends right after the deepest point.
    """
    wanted = list(dict.fromkeys(points))
    captured: dict[Point, Any] = {}

    def keeper(point: Point) -> Callable[[Any], None]:
        def keep(tensor: Any) -> None:
            captured[point] = tensor.detach()
            if stop and len(captured) == len(wanted):
                raise StopForward

        return keep

    with hooked(model, [(p, keeper(p)) for p in wanted]):
        yield captured


def forward(model: Any, input_ids: Any, logits: bool = False) -> Any:
    """Run ``model`` on ``input_ids`` without gradients or KV cache; a :class:`StopForward` ends it quietly.

    Returns the float32 logits when ``logits`` (and the pass was not stopped), else None.
    """
    import torch

    try:
        with torch.inference_mode():
            out = model(input_ids=input_ids, use_cache=False)
    except StopForward:
        return None
    return out.logits.float() if logits else None


@contextmanager
def edit(model: Any, point: Point, fn: Callable[[Any], Any]) -> Iterator[None]:
    """While inside, the tensor at ``point`` is replaced by ``fn(tensor)``."""
    with hooked(model, [(point, fn)]):
        yield


@contextmanager
def override(model: Any, point: Point, index: int, values: Any) -> Iterator[None]:
    """Write ``values`` (batch, tokens) into coordinate ``index`` of the last dimension at ``point``."""

    def write(tensor: Any) -> Any:
        out = tensor.clone()
        out[..., index] = values.to(device=out.device, dtype=out.dtype)
        return out

    with edit(model, point, write):
        yield


@contextmanager
def add(model: Any, point: Point, delta: Any, index: int | None = None) -> Iterator[None]:
    """Add ``delta`` at ``point``: a scalar/tensor to coordinate ``index``, or a broadcastable tensor to all."""

    def plus(tensor: Any) -> Any:
        out = tensor.clone()
        d = delta.to(device=out.device, dtype=out.dtype) if hasattr(delta, "to") else delta
        if index is None:
            out += d
        else:
            out[..., index] += d
        return out

    with edit(model, point, plus):
        yield
