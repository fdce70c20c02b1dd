"""AutoAttack-strength evaluation (Croce & Hein, ICML 2020) in plain torch: the probes ``apgd-ce``, ``apgd-t``,
``fab-t``, ``square`` and the ``autoattack`` ensemble, for Linf and L2 threat models.

One concept per module: :mod:`.threat` (norms, projection, random starts, 8-bit rounding), :mod:`.losses`
(CE, DLR, margin), :mod:`.apgd`, :mod:`.fab`, :mod:`.square` (the attacks as functions of a batch),
:mod:`.ensemble` (the AutoAttack sequence), :mod:`.base` (the probe: epsilons, re-check, records, metrics)
and :mod:`.probe` (the registered probes).
"""
