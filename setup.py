"""dmt_jax: Disaggregated Multi-Tower recommendation models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="dmt_jax",
    version="0.1.0",
    description="Disaggregated Multi-Tower (DMT) recommendation training on JAX meshes",
    packages=find_packages(include=["dmt_jax", "dmt_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax[cpu]==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "numpy>=2.0,<2.5",
        "ml-collections==1.1.0",
        "absl-py==2.5.1",
        "tqdm>=4.66,<5",
    ],
    extras_require={
        "test": ["pytest==9.0.3", "pytest-timeout==2.4.0", "nbclient==0.11.0", "nbformat==5.11.1",
                 "ipykernel>=6.29,<8", "matplotlib>=3.8,<4"],
        "plots": ["matplotlib>=3.8,<4"],
    },
)
