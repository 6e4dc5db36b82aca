"""MASCOT text-video retrieval: a versioned DVC/Snakemake reproduction pipeline."""

from .metrics import retrieval_metrics, text_video_metrics

__all__ = ["retrieval_metrics", "text_video_metrics"]
