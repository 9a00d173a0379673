"""Build the optional C hot loop of `xdpcap merge`; everything else is in pyproject.toml.

`optional=True`: without a compiler or Python headers the package still installs, and
the merge runs its pure-Python path (orchestrator/merge/captures.py falls back on ImportError).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "xdpcap.orchestrator.merge._fastmerge",
            ["orchestrator/merge/_fastmerge.c"],
            optional=True,
        )
    ]
)
