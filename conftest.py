"""The test fixtures (``tests/fixtures.py``) for the tests and for the doctests of the
package, which reach them with ``getfixture("tiny_model_folder")``."""

pytest_plugins = ["tests.fixtures"]
