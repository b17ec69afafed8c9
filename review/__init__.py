"""The governance review app (``python -m review``): decisions on duplicate groups and calibration."""
