"""One module per released GLM-4.5V action format: desktop calls, mobile JSON, web set-of-marks."""
