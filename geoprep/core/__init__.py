"""What every stage shares: errors, storage paths and atomic writes, href signing, progress bars."""
