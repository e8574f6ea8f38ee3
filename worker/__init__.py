"""Real-time CNN classifier of ZTF-style alert stamps: Kafka in, class probabilities out."""

__version__ = "0.1.0"
