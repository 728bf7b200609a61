"""Evaluation: the LFW verification protocol, 1:N identification, threshold calibration.

Pure numpy parts (`pairs`, `metrics`, `identify`, `calibrate`, `report`) work on arrays;
`runner` feeds them through the face pipeline.
"""
