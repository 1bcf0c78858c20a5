"""End-to-end pipelines (demo, training entry points, benchmarks); installed as ``medattn.pipelines``."""
