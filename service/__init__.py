"""ShuffleGuard: temporal-shuffling defense for video action-recognition serving."""

__version__ = "0.1.0"
