"""distill-audit: was this student model distilled from that teacher model?"""

__version__ = "0.1.0"
