"""From whole images to checked single-cell crops: segmentation, crop windows, QC, the crop stage."""
