"""Operations: Prometheus metrics (metrics.py), log set-up (logs.py), `dsonode status` and
`dsonode peers` (cli.py)."""
