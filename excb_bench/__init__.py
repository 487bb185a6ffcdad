"""The excb-bench product layer: CLI, pipeline (run directory, manifest, lock) and stage registry.

``excb`` holds the method; ``benchmarks`` and ``detection`` hold downstream stages; this
package wires them into one command.
"""
