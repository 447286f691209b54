"""Packaging for teos, The Eye of Satoshi watchtower."""

from setuptools import find_packages, setup


def _requirements(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


setup(
    name="teos",
    version="0.2.0",
    description="The Eye of Satoshi: a Lightning Network watchtower",
    python_requires=">=3.11,<3.14",
    classifiers=[
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX :: Linux",
    ],
    packages=find_packages(include=["common", "common.*", "teos", "teos.*"]),
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": _requirements("requirements-test.txt")},
    entry_points={
        "console_scripts": [
            "teos-regtest=teos.regtest.__main__:main",
            "teosd=teos.__main__:main",
            "teos-cli=teos.cli.teos_cli:main",
            "teos-client=teos.cli.teos_client:main",
        ]
    },
)
