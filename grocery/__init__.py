"""grocery: the ML library behind grocery-jobs.

Deliberately empty of imports: the API imports the torch-free modules
(``grocery.index``) and must not pay for torch, so nothing heavy loads here.
"""

__version__ = "0.1.0"
