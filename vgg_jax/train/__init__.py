"""The paper's training (Sec. 3.1): the config check, the optimiser and jitted steps, the loop
and its phases, the run's files and resume policy, pre-initialisation from another net, progress
lines and TensorBoard scalars. Imports core, data and weights (pre-initialisation from any model
source); nothing imports train but the train.py command line.
"""
