"""Why BN helps, measured on the user's run: landscape, internal covariate shift, sharpness."""
