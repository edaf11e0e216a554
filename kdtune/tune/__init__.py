"""Every Ray Tune call in kdtune: the search space (``search``), the trainable (``trainable``)
and the Tuner with resume and best-trial selection (``run``). Import the submodules directly;
this package stays light so ``import kdtune`` never pulls in Ray.
"""
