"""One module per pipeline stage; the CLI and the Airflow DAGs call the same functions."""
