"""Every hook of the plugin system (the library's and the application's) is documented and exercised,
and the application's hook lives on the library's plugin manager."""

from __future__ import annotations

import inspect

import hsa_app.hookspecs
import pluggy
from hsa_app.tasks import registry

import hsa_core
import hsa_core.hookspecs
from hsa_core.plugins import PluginHost


def _specs(module: object) -> list[str]:
    marker = f"{hsa_core.hookspecs.PROJECT}_spec"
    return [name for name, fn in inspect.getmembers(module, inspect.isfunction) if hasattr(fn, marker)]


def test_every_hook_is_documented() -> None:
    core, app = _specs(hsa_core.hookspecs), _specs(hsa_app.hookspecs)
    assert core == ["hsa_register_backbones", "hsa_register_retrieval_layers"]
    assert app == ["hsa_register_tasks"]
    for module, names in ((hsa_core.hookspecs, core), (hsa_app.hookspecs, app)):
        for name in names:
            doc = inspect.getdoc(getattr(module, name)) or ""
            assert "register(" in doc and len(doc) > 100, name


def test_every_hook_is_exercised_by_a_builtin_plugin() -> None:
    host = PluginHost()
    host.load_entry_points()
    registry(host)  # adds the application's hookspecs
    for name in ["hsa_register_backbones", "hsa_register_retrieval_layers", "hsa_register_tasks"]:
        plugins = {impl.plugin_name for impl in getattr(host.pm.hook, name).get_hookimpls()}
        assert plugins & {"hsa_builtin_layers", "hsa_builtin_backbones", "hsa_builtin_tasks"}, name
    assert registry(host) is registry(host)  # the hookspecs are added once
    assert host.backbone_registry().names() and host.retrieval_registry().names() and registry(host).names()


def test_a_plugin_implements_library_and_application_hooks_with_one_marker() -> None:
    class Both:
        @hsa_core.hookimpl
        def hsa_register_tasks(self, register):
            register("both_task", dict, description="a task")

        @hsa_core.hookimpl
        def hsa_register_backbones(self, register):
            register("both_mixer", dict, description="a backbone")

    host = PluginHost()
    host.register_plugin(Both(), name="both")
    assert host.backbone_registry().entry("both_mixer").plugin == "both"
    assert registry(host).entry("both_task").plugin == "both"
    late = PluginHost()
    registry(late)
    late.register_plugin(Both(), name="both")  # registered after the spec was added: seen on next use
    assert registry(late).names() == ["both_task"]


def test_a_bad_task_hook_signature_is_refused_once_the_spec_is_known() -> None:
    class Bad:
        @hsa_core.hookimpl
        def hsa_register_tasks(self, register, extra_argument):
            pass

    host = PluginHost()
    registry(host)
    try:
        host.register_plugin(Bad(), name="bad")
    except pluggy.PluginValidationError:
        return
    raise AssertionError("pluggy accepted an implementation with an argument the spec does not have")
