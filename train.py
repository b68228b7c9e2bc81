"""Entry point: ``python train.py experiment=cifar_car`` (see README.md)."""

from anogan.cli.train import main

if __name__ == "__main__":
    main()
