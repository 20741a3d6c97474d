"""Exercise checkers for the notebooks: each `check_*` tells a learner whether their function is right.

The checkers never raise: they print a verdict and return True or False, so a notebook with an
unfinished exercise still runs top to bottom. Reference solutions live apart, in m3lite.solutions.
"""
from .checker import verdict
