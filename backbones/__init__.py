"""Built-in backbones (mixers), registered through the ``hsa`` entry-point group by :mod:`.plugin`.

=============  =====================================  ==========================================
kind           class                                  module
=============  =====================================  ==========================================
``mamba``      :class:`~.mamba.Mamba`                 :mod:`.mamba` (mamba-ssm compatible)
``mamba2``     :class:`~.mamba2.Mamba2`               :mod:`.mamba2` (mamba-ssm compatible)
``gla``        :class:`~.fla_adapters.GLA`            :mod:`.fla_adapters` (fla)
``rwkv6``      :class:`~.fla_adapters.RWKV6`          :mod:`.fla_adapters` (fla)
``rwkv7``      :class:`~.fla_adapters.RWKV7`          :mod:`.fla_adapters` (fla)
``swa``        :class:`~.attention.CausalAttention`   :mod:`.attention` (torch SDPA)
``attention``  :class:`~.attention.CausalAttention`   :mod:`.attention` (torch SDPA)
=============  =====================================  ==========================================
"""
