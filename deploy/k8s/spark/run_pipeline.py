"""The driver's main file of an icefield pipeline on Spark in Kubernetes (``SparkApplication`` or spark-submit).

spark-submit starts the driver with the Kubernetes master, the image and the Iceberg catalog settings, then
runs this file with the application arguments, which are icefield's command line (``--project
/opt/icefield/project run orders``). icefield's ``engine: spark`` (``ICEFIELD__ENGINE=spark`` in the image)
then builds its session in this process; with ``ICEFIELD__SPARK__MASTER`` set to the same ``k8s://`` URL it
runs on the context spark-submit configured, and its executors are the pods the manifest describes.
The exit code is icefield's (0, 1, 2 config, 75 transient: the operator's restart policy retries).
"""

from __future__ import annotations

import sys

from icefield.__main__ import main

if __name__ == "__main__":
    sys.argv = ["icefield", *sys.argv[1:]]
    main()
