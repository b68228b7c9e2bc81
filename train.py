"""Entry point: ``python train.py experiment=cifar_car`` (see README.md)."""

from anogan.engine.pipeline import main

if __name__ == "__main__":
    main()
