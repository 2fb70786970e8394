"""Deploy tooling: an app's topology as infrastructure (`cloudformation`). It shares the
SNS/SQS mapping with the runtime adapter, so both make the same resources, and calls no
AWS API."""
