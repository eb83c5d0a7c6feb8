"""kd_mh: face/voice emotion divergence by knowledge distillation (JAX/Flax)."""

import setuptools

setuptools.setup(
    name="kd_mh",
    version="0.1.0",
    description=("Research tool: teacher (face) / student (voice) emotion models and their "
                 "divergence, for studying incongruent or flat affect in audio-visual recordings."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["kd_mh", "kd_mh.*", "data_prep", "data_prep.*",
                                               "launch", "launch.*"]),
    # Versions are pinned in requirements.txt; these are the direct imports.
    install_requires=[
        "absl-py", "apache-beam", "av", "face-recognition", "flax", "h5py", "jax", "librosa",
        "matplotlib", "ml_collections", "numpy", "opencv-python-headless", "optax",
        "orbax-checkpoint", "scikit-image", "scikit-learn", "scipy", "soundfile", "tensorflow-cpu",
        "tensorflow-datasets", "threadpoolctl", "tqdm",
    ],
    entry_points={"console_scripts": ["kd-mh=launch.cli:main"]},
)
