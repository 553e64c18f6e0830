"""hsa-toolkit application: training, evaluation, synthetic tasks and text data, built on :mod:`hsa_core`.

The rule that splits the code in two: a module belongs to the library (:mod:`hsa_core`) when someone
who only *uses or extends a model* needs it: define a layout, build, run, decode, save, load or
convert a model, write a plugin and check it against the contracts. It belongs to the application
(this package) when it exists only to *make or judge a run*: a training loop, its data, its tasks,
its checkpoints, its recipes, its evaluations. Hence, in the library: interfaces, hookspecs and
plugins (the hooks of the kinds a layout names), ops, modules, layout, model, io, presets (layouts),
generation (decoding is running a model), losses (the fused LM head + loss, a function of the model's
output usable by any training loop), summary (describing a model), convert (checkpoint formats of a
model), testing (the contract checks a plugin author runs), devices. In the application:

* :mod:`hsa_app.runtime` — the process group and the run directory (checkpoints), shared by all below;
* :mod:`hsa_app.tasks` — synthetic long-context tasks and their hook (:mod:`hsa_app.hookspecs`);
* :mod:`hsa_app.data` — tokenizers, ``hsa data prepare``, token shards, the sampler, text passkeys;
* :mod:`hsa_app.evaluation` — ``hsa eval``: task grids and perplexity by position;
* :mod:`hsa_app.training` — ``hsa train``: the loop, its text-data source, throughput benchmarks;
* :mod:`hsa_app.recipes` — named training settings (``--recipe ramba-paper``).

Dependencies point one way. The list goes from the bottom up: a subpackage imports only those listed
before it (``training`` imports ``evaluation``, ``data``, ``tasks`` and ``runtime``; none of them
imports ``training``). Everything here may import :mod:`hsa_core`; :mod:`hsa_core` never imports
:mod:`hsa_app` (``tests/test_imports.py`` asserts both). The command line (:mod:`hsa_cli`) sits on top.
"""
