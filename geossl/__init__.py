"""geossl: self-supervised pretraining (CSF, GASSL, CACo, SoundingEarth) from geoprep shards."""
