"""The model folder and the study folder: their files, written and read in one place."""
