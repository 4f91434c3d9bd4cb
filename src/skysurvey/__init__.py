"""skysurvey: astronomical images to queryable source catalogs, locally or on AWS.

The package is the one importable core shared by the scripts in ``scripts/``, the Lambda
handler, the notebook and the tests.
"""

__version__ = "0.2.0"
