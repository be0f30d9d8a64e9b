"""Entry points for other systems that run icefield projects (Airflow: :mod:`icefield.integrations.airflow`).

Each integration imports its system only inside its own package, so icefield installs and runs without it."""
