"""ttc_jax: compute-optimal test-time compute for LLMs in JAX/Flax."""
import setuptools

setuptools.setup(
    name="ttc_jax",
    version="0.1.0",
    description=(
        "Compute-optimal test-time compute (Snell et al. 2024) in JAX/Flax NNX: "
        "policy, PRM and revision models over one sampling core."
    ),
    packages=setuptools.find_packages(include=["ttc_jax", "ttc_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        # ml_dtypes 0.7.0 takes 0.7-0.9 s to import (its extension module; 0.6.0: 7 ms, measured
        # on AMD EPYC), paid by every process that imports jax: each stage process of a study,
        # each launch script a test runs (launch/run.py --help: 2.4 s -> 1.7 s). jax needs >= 0.5.
        "ml_dtypes>=0.5,<0.7",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "tensorflow-datasets",
        "array_record",
        "sentencepiece",
        "absl-py",
        "ml-collections",
        "numpy",
        "matplotlib",
        "scipy",
        "scikit-learn",  # the verifier ensembles' logistic regression (verifiers/ensemble.py)
        "rapidfuzz",  # edit distances of the revision data (training/revisions.py)
    ],
    extras_require={
        # torch pinned: 2.13.0 is a CPU build; an unpinned torch pulls a multi-GB CUDA build.
        "test": [
            "pytest",
            "pytest-xdist",
            "pytest-timeout",
            "scipy",
            "nbclient",
            "nbformat",
            "ipykernel",
            "torch==2.13.0",
            "transformers",
            "safetensors",
            "tokenizers",
            "jinja2>=3.1.6",
            "math-verify",
            "hypothesis",
            "import-linter",
            "filelock",
        ],
        # Imported checkpoints (ttc_jax.models.hf_import, ttc_jax.tokenizers.hf): safetensors,
        # HF tokenizers, transformers for chat-template rendering (no torch needed); the
        # MATH / GSM8K grader (ttc_jax.tasks.grading): math-verify.
        "hf": [
            "safetensors",
            "tokenizers",
            "transformers",
            "jinja2>=3.1.6",
            "math-verify",
        ],
        "bench": [
            "torch==2.13.0",
            "transformers",
        ],
    },
)
