"""The Airflow glue of the MNIST DAGs, so that the DAG files are wiring only; one concern a
module, each imported by name (nothing is re-exported here):

- ``common``: DAG ids, assets, the trigger form and the run's config, S3 credentials from the
  Airflow connection, the notifier, every task's defaults;
- ``stages``: the stage wrapper (XCom <-> typed results, ``gc.freeze``, quiet TensorFlow);
- ``schedules``: interval timetables, and how often in words;
- ``training``, ``notes``, ``approval``: the training DAG's tasks, run note and approve task;
- ``watch``, ``scoring``, ``feedback``: the landing check, batch scoring, feedback DAGs;

Not DAG files: ``.airflowignore`` keeps the DAG processor out of this folder. Airflow puts the
bundle's folder on ``sys.path`` in the DAG processor, each task's process and ``airflow dags
test``, so the DAG files import it by name; the Models page plugin never imports it.
"""
