"""Fixtures shared by the test files (tests/ is on sys.path, as for ``from cli_tools import ...``)."""

from s3server import s3_env, s3_server

__all__ = ["s3_env", "s3_server"]
