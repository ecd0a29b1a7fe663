"""What the tests share: paths, environments, brokers, processes, bundles."""
