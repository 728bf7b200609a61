"""identity: who is this face? Enrollment, 1:N search, 1:1 verification, clustering, evaluation."""

__version__ = "0.1.0"
