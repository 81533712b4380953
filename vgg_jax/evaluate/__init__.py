"""The paper's testing (Sec. 3.2, 4): single-crop, dense and multi-crop evaluation over several
scales, with flips, of one net or an ensemble, reported as top-1/top-5 error. Imports core, data
and weights (the members are any model source); `predict` and eval.py build on it.
"""
