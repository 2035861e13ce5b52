"""Filter and deduplicator ops with data-juicer's names, parameters and stat keys.

`registry.build_ops(recipe)` turns a recipe's `process` list into op objects; an op is a plain
object with `compute(sample_images, sample, stats)` and `decide(stats) -> Rejection | None`.
"""
