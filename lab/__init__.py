"""sdlab core: spec math, strategies, models, protocol, scenarios, runner, metrics, simulator."""
