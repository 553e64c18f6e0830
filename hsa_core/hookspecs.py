"""Hook specifications of the ``hsa`` plugin system (pluggy).

A plugin is any module or object with functions marked ``@hsa_core.hookimpl`` whose names match the
specs below. Plugins are found through the entry-point group ``hsa`` of installed distributions; the
toolkit's own backbones and layers are registered through the same hooks (``hsa_core.builtin_plugin``
and ``hsa_backbones.plugin``). The application declares its own hooks with the same project name
(:mod:`hsa_app.hookspecs`: tasks) and adds them to the same plugin manager
(:meth:`hsa_core.plugins.PluginHost.extension`), so one plugin may implement hooks of both.

Example (a third-party package)::

    # pyproject.toml
    [project.entry-points.hsa]
    my_rnn = "my_rnn.plugin"

    # my_rnn/plugin.py
    import hsa_core

    @hsa_core.hookimpl
    def hsa_register_backbones(register):
        register("my_rnn", MyRNNMixer, description="my recurrent backbone", defaults={"expand": 2})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "hsa"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def hsa_register_backbones(register: Callable[..., Any]) -> None:
    """Register backbone (mixer) kinds.

    Call ``register(name, factory, *, description="", requires=(), extra=None, defaults=None)`` once
    per kind. ``factory(d_model, **options)`` must return a :class:`hsa_core.interfaces.Mixer`.
    ``requires`` lists importable module names the factory needs (``hsa list`` reports whether they
    are installed); ``extra`` names the extra of the plugin's own package that brings them (``hsa list``
    and missing-dependency errors say ``pip install '<package>[extra]'``);
    ``defaults`` are the options a layout may set, with their default values (unknown options in a
    layout are rejected with the allowed list).
    """


@hookspec
def hsa_register_retrieval_layers(register: Callable[..., Any]) -> None:
    """Register retrieval-layer kinds (layers that read a chunk memory through a selection).

    Call ``register(name, factory, *, description="", defaults=None)``.
    ``factory(d_model, *, kv_heads, head_dim, chunk_size, **options)`` (the memory's geometry plus the
    layout's options, exactly the keys of ``defaults``) returns an ``nn.Module`` with
    :class:`hsa_core.modules.hsa_layer.HSALayer`'s interface:
    ``forward(x, memory_state, selection, *, position) -> y``, where ``position`` is the absolute
    position of ``x[:, 0]`` (tokens seen before this call). :func:`hsa_core.testing.check_retrieval`
    checks a layer against this contract. ``extra`` (optional) names the ``pip install
    <your package>[extra]`` that brings ``requires``.
    """
