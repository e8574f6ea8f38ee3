"""The Kafka loop: configuration, cluster, consume → decode → infer → produce → commit, metrics."""
