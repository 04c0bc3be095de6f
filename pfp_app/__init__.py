"""PFP Studio: long, consistent video with a frame-preserving compressed memory (arXiv 2512.23851)."""
