"""The pipeline ``run()`` and what it needs: inference, the GAN/encoder store, cost estimates, run folders."""
