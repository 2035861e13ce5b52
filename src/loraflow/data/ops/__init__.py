"""Filter and deduplicator ops with data-juicer's names, parameters and stat keys.

`registry.build_op` turns one entry of a recipe's `process` list into an op object; `base.Op`
declares the methods `filter_run` calls on each kind of op (filter, dedup, model, mapper).
"""
