# The Airflow image for the MNIST retraining pipeline: Airflow 3.3.2 (Python 3.11), the
# pipeline's pinned dependencies, the mnist_tasks package, the DAG and the Models page plugin.
#
#   docker build -t mnist-airflow .                                                   # CPU
#   docker build -t mnist-airflow-gpu --build-arg TENSORFLOW='tensorflow[and-cuda]==2.21.0' .
#
# docker-compose.yaml builds both (the GPU one for the worker on the `gpu` queue).
FROM apache/airflow:3.3.2-python3.11

# TensorFlow build: the CPU wheel by default; the GPU worker's image brings CUDA via pip.
ARG TENSORFLOW=tensorflow-cpu==2.21.0

WORKDIR /opt/mnist
COPY --chown=airflow:0 requirements.txt ./
# Installing apache-airflow at the image's own version keeps pip from changing Airflow itself.
RUN sed -i "s/^tensorflow-cpu==.*/${TENSORFLOW}/" requirements.txt \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r requirements.txt

COPY --chown=airflow:0 pyproject.toml README.md ./
COPY --chown=airflow:0 mnist_tasks ./mnist_tasks
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import mnist_tasks.pipeline, mnist_tasks.registry"

# docker-compose.yaml mounts dags/ and plugins/ over these, so edits show without a rebuild.
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
# airflow.cfg and the simple auth manager's passwords live here (a volume in docker compose).
RUN mkdir -p /opt/airflow/config

WORKDIR /opt/airflow
