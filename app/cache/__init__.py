"""The result cache: with a fixed seed the image is a function of the uploads, the
options and the loaded model, so either door answers a repeated request from memory."""
