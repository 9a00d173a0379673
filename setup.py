"""Build the optional C hot loop of `xdpcap merge`; everything else is in pyproject.toml.

`optional=True`: without a compiler or Python headers the package still installs, and
the merge runs its pure-Python path (orchestrator/merge.py falls back on ImportError).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "xdpcap.orchestrator._fastmerge",
            ["orchestrator/_fastmerge.c"],
            optional=True,
        )
    ]
)
