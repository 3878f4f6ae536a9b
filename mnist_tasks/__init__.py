"""The MNIST retraining pipeline as a plain Python library.

One module per stage (ingest, preprocess, train, evaluate, gate, register), each runnable
without Airflow: ``python -m mnist_tasks <stage> --help``. This package never imports Airflow.
"""

import os as _os

# TensorFlow's CPU settings. TensorFlow reads them once, when it loads, so they are set here,
# before any module of this package imports it; a value already in the environment wins.
# - A pool allocator (BFC) for tensors on the CPU. TensorFlow's default hands each step's
#   buffers back to the system, and faulting them in again took more CPU than the convnets'
#   arithmetic (a cnn epoch: 44 s, 39 s of it in the kernel; with the pool 23 s, 4 s).
# - oneDNN's kernels, which TensorFlow turns on by itself only on CPUs with AVX-512: on an
#   AVX2 CPU they take the cnn from 15-17 to 7-10 CPU s per 100 steps.
# Plain Keras's dense network took the same time either way (docs/benchmarks.md, session 13).
TENSORFLOW_CPU_DEFAULTS: dict[str, str] = {
    "TF_CPU_ALLOCATOR_USE_BFC": "1",
    "TF_ENABLE_ONEDNN_OPTS": "1",
}
for _name, _value in TENSORFLOW_CPU_DEFAULTS.items():
    _os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
