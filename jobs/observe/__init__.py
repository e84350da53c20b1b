"""What operators watch, framework-free: the fleet's numbers read from the database (``fleet``),
the counters kept in the transactions that record outcomes (``models``, ``counting``), the job
context carried into log lines (``logs``) and the trace context stored on a job row (``tracecontext``).

The Prometheus collector lives in :mod:`api.metrics`, the OpenTelemetry wiring in
:mod:`api.telemetry` and :mod:`worker.telemetry`: this package imports neither library."""
