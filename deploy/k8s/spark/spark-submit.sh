#!/bin/sh
# The application of sparkapplication.yaml, submitted with spark-submit instead of the Spark operator:
# the same image, main file, arguments, resources, service account, environment and catalog settings.
# Run it where `kubectl` works, with Spark 4.1's spark-submit (pip install 'pyspark==4.1.4' ships one);
# K8S_API defaults to the current kubectl context's API server.
set -eu
K8S_API="${K8S_API:-$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')}"
exec spark-submit \
  --master "k8s://${K8S_API}" \
  --deploy-mode cluster \
  --name icefield-orders \
  --conf spark.kubernetes.namespace=icefield \
  --conf spark.kubernetes.container.image=icefield-spark:0.1.0 \
  --conf spark.kubernetes.container.image.pullPolicy=IfNotPresent \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName=icefield-spark \
  --conf spark.driver.cores=1 \
  --conf spark.kubernetes.driver.limit.cores=1 \
  --conf spark.driver.memory=2g \
  --conf spark.executor.instances=2 \
  --conf spark.executor.cores=1 \
  --conf spark.kubernetes.executor.limit.cores=1 \
  --conf spark.executor.memory=2g \
  --conf spark.sql.extensions=org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions \
  --conf spark.sql.defaultCatalog=icefield \
  --conf spark.sql.session.timeZone=UTC \
  --conf spark.ui.showConsoleProgress=false \
  --conf spark.sql.catalog.icefield=org.apache.iceberg.spark.SparkCatalog \
  --conf spark.sql.catalog.icefield.type=jdbc \
  --conf spark.sql.catalog.icefield.uri=jdbc:postgresql://postgres.icefield.svc:5432/lake \
  --conf spark.sql.catalog.icefield.warehouse=s3://lake/warehouse \
  --conf spark.sql.catalog.icefield.jdbc.schema-version=V1 \
  --conf spark.sql.catalog.icefield.cache-enabled=false \
  --conf spark.sql.catalog.icefield.io-impl=org.apache.iceberg.aws.s3.S3FileIO \
  --conf spark.sql.catalog.icefield.client.region=us-east-1 \
  --conf spark.kubernetes.driverEnv.ICEFIELD__SPARK__MASTER=k8s://https://kubernetes.default.svc:443 \
  --conf spark.kubernetes.driverEnv.ICEFIELD__WAREHOUSE=s3://lake/warehouse \
  --conf spark.kubernetes.driverEnv.AWS_REGION=us-east-1 \
  --conf spark.kubernetes.driver.secretKeyRef.ICEFIELD__CATALOG__URI=icefield-catalog:uri \
  --conf spark.kubernetes.driver.secretKeyRef.AWS_ACCESS_KEY_ID=icefield-s3:access-key \
  --conf spark.kubernetes.driver.secretKeyRef.AWS_SECRET_ACCESS_KEY=icefield-s3:secret-key \
  --conf spark.executorEnv.AWS_REGION=us-east-1 \
  --conf spark.kubernetes.executor.secretKeyRef.AWS_ACCESS_KEY_ID=icefield-s3:access-key \
  --conf spark.kubernetes.executor.secretKeyRef.AWS_SECRET_ACCESS_KEY=icefield-s3:secret-key \
  local:///opt/icefield/run_pipeline.py --project /opt/icefield/project run orders
