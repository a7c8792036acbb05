"""The job layer: every Hydra-aware step (compose, instantiate, train on behalf of an analysis, write run
directories). Imported by the entry points (train.py, analyze.py, build_cache.py) only; no package
under src/ imports it. See docs/DESIGN.md (Layout)."""
