"""The fusion model: what one forward pass computes, and nothing about data or training.

Modules, in reading order:

- ``config``: ``ModelConfig``, every size and option (the public code's model by default), and
  the named departures from it.
- ``positions``: the positional tables and the stacks' initialisation.
- ``key_sparse``: the key-sparse rule (which keys each query keeps).
- ``attention``: multi-head attention, vanilla or key-sparse (the public code's operations).
- ``fast_attention``: the same numbers through fused kernels, without the attention maps.
- ``layers``: the Transformer layer and the stack of layers.
- ``ccab``: the cascaded cross-attention blocks.
- ``normalise``: per-dimension input standardisation (an option).
- ``tasks``: what the output holds for the task (class logits, attribute values, or both).
- ``model``: ``KSTransformer``, the whole model.
- ``baselines``: the head baseline and the linear probe as torch modules.
- ``architectures``: the model a ``ModelConfig`` names.

Nothing here imports ``ksr.fuse.train`` or ``ksr.fuse.report``.
"""
