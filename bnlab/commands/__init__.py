"""The `bnlab` commands that talk to a running API over HTTP (experiment, sweep, predict,
collapse). They import nothing of the service: a laptop with the package can drive any server."""
