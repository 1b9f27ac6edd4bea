"""What runs the core on devices: jitted loops over data, sharded over a mesh.

``parallel`` (the mesh policy and data placement), ``loops`` (epoch drivers), ``optim`` (the one
optimizer builder), ``train`` (the one trainer), ``evaluate``, ``batchnorm`` (recalibration of
running statistics), ``masks`` (saliency masks), ``mcu`` (the curve trainer), ``sweep`` (the
curve sweep), ``mia`` (membership inference), ``checkpoint`` and ``signals``.
"""
