"""Generated code of the fedstream.v1 wire contracts (make proto); do not edit by hand."""
