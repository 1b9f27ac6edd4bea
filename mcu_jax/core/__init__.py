"""The pure core of MCU: math over pytrees, no data, no devices.

``curves`` (Bezier and polygonal chains, phi(t)), ``beta`` (adaptive and fixed beta policies and
their targets), ``choice`` (the choice of t on a sweep), ``objectives`` (losses and accuracies of
logits) and ``stats`` (bootstrap intervals and paired permutation tests over models).
"""
