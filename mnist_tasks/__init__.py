"""The MNIST retraining pipeline as a plain Python library.

One module per stage (ingest, preprocess, train, evaluate, gate, register), each runnable
without Airflow: ``python -m mnist_tasks <stage> --help``. This package never imports Airflow.
"""

__version__ = "0.1.0"
