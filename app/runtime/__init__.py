"""What every part of a run shares: the process group and the run directory.

* :mod:`.distributed` — ``torchrun`` environment, DDP / FSDP2 wrapping, collective helpers;
* :mod:`.checkpoint` — atomic checkpoint directories, exact resume, the model directory a run stands for;
* :mod:`.pinned` — torch's pinned allocator options for an offloaded chunk memory (process-wide).

Training writes runs, evaluation reads them and the text-data source reduces its statistics over the
process group: all three import this package, which imports none of them (it sits at the bottom of
:mod:`hsa_app`, above the library :mod:`hsa_core` only).
"""
